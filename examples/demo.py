"""`make demo`: the registry end to end on the embedded SQLite default, in a fresh temporary folder.

Every step is a real `registry` command, printed before it runs, so the transcript doubles as a
tour of the command line. The database is a new SQLite file (REGISTRY_DB points at it), so the
demo never touches your own registry.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REGISTRY = str(Path(sys.executable).with_name("registry"))


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*args: str, expect: int = 0, env: dict[str, str]) -> str:
    print(f"$ registry {shlex.join(args)}", flush=True)
    done = subprocess.run([REGISTRY, *args], env=env, capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    print(done.stderr, end="", file=sys.stderr, flush=True)
    if done.returncode != expect:
        sys.exit(f"demo failed: `registry {shlex.join(args)}` exited {done.returncode}, expected {expect}")
    return done.stdout


def save_tiny_checkpoint(path: Path) -> None:
    """A CT-CLIP-style file: a tiny CTViT under `visual_transformer.` beside other models' keys."""
    import torch

    from registry.catalog import get_builtin_variant
    from registry.families import get_family, make_config

    variant = get_builtin_variant("ctvit/tiny-ctclip")
    family = get_family(variant.family)
    model = family.build(make_config(family, variant.config))
    state = {f"visual_transformer.{k}": v for k, v in model.state_dict().items()}
    state["temperature"] = torch.tensor(1.0)
    state["to_text_latent.weight"] = torch.zeros(16, 24)
    torch.save(state, path)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="registry-demo-") as workdir:
        env = {**os.environ, "REGISTRY_DB": f"sqlite:///{workdir}/registry.db"}
        step("The model families the registry can build (no database needed)")
        run("families", env=env)

        step("Create the registry (SQLite, embedded) and register every built-in variant")
        run("init", env=env)
        run("info", env=env)

        step("Every built-in variant with its fingerprint (schema-equivalent variants share one)")
        run("variants", "list", env=env)

        step("What separates the baseline CTViT from the optimized one")
        run("variants", "diff", "ctvit/baseline", "ctvit/optimized", env=env)

        step("CI's drift check: the current code still builds every registered layout")
        run("check", env=env)

        checkpoint = Path(workdir) / "ctclip_tiny.pt"
        save_tiny_checkpoint(checkpoint)
        step("Fingerprint a CT-CLIP-style checkpoint without running its pickle or reading tensor data")
        run("fingerprint", str(checkpoint), env=env)

        step("Which registered build loads it: the CTViT under visual_transformer.")
        run("match", str(checkpoint), env=env)
    print("\ndemo finished")


if __name__ == "__main__":
    main()
