"""Model registry with versioned architecture schemas for PyTorch checkpoints.

The library is the product; `registry.command.cli` (the repository's `cli.py`) is a thin click
layer over it.  Importing this package is cheap: torch, diffusers and SQLAlchemy are imported
only by the functions that need them.

For your own trainer (README, "Your own models"):
- `resume(path_or_dir, family=..., db=...)` → `Resumed` (model built and loaded strictly, config,
  step, the checkpoint's other entries), or None for a folder without a checkpoint;
- `start_run(model, resumed=...)` → `TrainingRun` (`checkpoint_metadata`, `log_checkpoint`, `end`);
- `checkpoint_metadata(model, step=...)` and `log_checkpoint(path)` without a run;
- `latest_checkpoint(folder)`: the newest checkpoint by name (step-N.pt, checkpoint-N/, Lightning,
  DCP step-N/, DeepSpeed's `latest` tag), or None;
- `RegistryError` (every error, with `exit_code`), `ResumeRefused` (no build loads the checkpoint).
"""

__version__ = "0.1.0"

# Public name → module; loaded on first use (PEP 562), so `import registry` stays cheap.
_LAZY = {
    "resume": "registry.resuming",
    "Resumed": "registry.resuming",
    "ResumeWarning": "registry.resuming",
    "start_run": "registry.lineage",
    "TrainingRun": "registry.lineage",
    "checkpoint_metadata": "registry.lineage",
    "log_checkpoint": "registry.lineage",
    "UnregisteredModelError": "registry.lineage",
    "latest_checkpoint": "registry.latest",
    "RegistryError": "registry.errors",
    "ResumeRefused": "registry.training.resume",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
