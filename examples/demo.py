"""`make demo`: both incidents of `../shared/incidents/`, end to end, on the embedded SQLite default.

Runs in a fresh temporary folder with a new SQLite database (REGISTRY_DB points at it), so it
never touches your own registry. Every step is a real `registry` command, printed before it runs:

1. a tiny baseline CTViT trains; the code's default moves to the optimized CTViT; the requeued
   job resumes and the registry picks the baseline build the checkpoint needs (incident 1's
   job would have failed, or worse); `registry check` catches the planted RMSNorm bug, and a
   forward-only regression (GEGLU's gates swapped: every name, shape and class unchanged) through
   the behaviour digest recorded with each schema version;
2. a tiny LDM UNet trains; the new diffusers UNet refuses its checkpoint (the diff says why);
   `registry convert` turns it into the diffusers layout, and training of the diffusers UNet
   resumes at the LDM run's step, not at step 0 (incident 2's trainer started over);
3. the first incident in a user's own repository (a copy of `examples/own-model`): the project's
   `pyproject.toml` declares its variants, `registry init` registers them, the trainer resumes
   the baseline through `registry.resume` although the config now says RMSNorm, and CI's
   `registry check` fails on the RMSNorm planted in the user's own `Attention`;
4. `registry audit` shows which runs used which architecture, the resume chains and conversions,
   and `registry report` writes the same as a static site to ./demo-report (its path is printed).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REGISTRY = str(Path(sys.executable).with_name("registry"))
PLANTED = str(Path(__file__).with_name("planted_change.py"))
# The report outlives the demo's temporary folder: it is written where `make demo` runs.
REPORT = Path.cwd() / "demo-report"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*args: str, expect: int = 0, env: dict[str, str], command: list[str] | None = None) -> str:
    print(f"$ registry {shlex.join(args)}", flush=True)
    done = subprocess.run([*(command or [REGISTRY]), *args], env=env, capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    print(done.stderr, end="", flush=True)
    if done.returncode != expect:
        sys.exit(f"demo failed: `registry {shlex.join(args)}` exited {done.returncode}, expected {expect}")
    return done.stdout


def naive_load(ldm_checkpoint: Path) -> None:
    """What incident 2's trainer did: strict-load the LDM weights into diffusers' UNet."""
    import torch

    from registry.catalog import get_builtin_variant
    from registry.families import get_family, make_config

    variant = get_builtin_variant("diffusers-unet/tiny")
    family = get_family(variant.family)
    unet = family.build(make_config(family, variant.config))
    state = torch.load(ldm_checkpoint, weights_only=True)["model"]
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = sorted(set(unet.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(unet.state_dict()))
        print(f"torch: {str(exc).splitlines()[0]} {len(missing)} missing keys (e.g. {missing[0]}), "
              f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        print("       incident 2's trainer caught this error and silently started again from step 0")


OWN_MODEL = Path(__file__).with_name("own-model")


def forward_only_regression(env: dict[str, str]) -> None:
    """A change to a forward alone: the layout check passes it, the behaviour probe does not."""
    planted = {**env, "PLANTED_CHANGE": "geglu-gates"}
    command = [sys.executable, PLANTED]
    step("A tidy-up swaps GEGLU's halves (`x, gate = x.chunk(2)` → `gate, x = ...`): names, shapes and "
         "module classes are unchanged, so checkpoints load and the layout check passes")
    run("check", "ctvit/tiny", "--no-behaviour", env=planted, command=command)
    step("The behaviour digest recorded at `registry init` (name-derived weights, a fixed probe input) "
         "catches it: CI's `registry check` fails")
    run("check", "ctvit/tiny", expect=1, env=planted, command=command)


def own_model_chapter(work: Path, env: dict[str, str]) -> None:
    """The first incident where it happened: in the user's own code, not in a built-in family."""
    project = work / "own-model"
    shutil.copytree(OWN_MODEL, project, ignore=shutil.ignore_patterns("runs", "registry.db*", "__pycache__"))

    def in_project(*argv: str, expect: int = 0) -> None:
        print(f"$ {shlex.join(argv)}", flush=True)
        program = REGISTRY if argv[0] == "registry" else sys.executable
        done = subprocess.run([program, *argv[1:]], cwd=project, env=env, capture_output=True, text=True)
        print(done.stdout + done.stderr, end="", flush=True)
        if done.returncode != expect:
            sys.exit(f"demo failed: `{shlex.join(argv)}` exited {done.returncode}, expected {expect}")

    print("\n##### Your own models: the first incident in a user's repository (examples/own-model)")
    step("The project's pyproject.toml declares its variants by class and YAML config; `registry init` registers them")
    print("[tool.registry.variants.\"videovit/baseline\"]  class = \"src.models.vit:VideoViT\"  "
          "config = \"configs/base_config.yaml\"  config_key = \"model.image_encoder\"")
    in_project("registry", "init")
    step("The project's own train.py trains the baseline (it calls registry.start_run and embeds the registry record)")
    in_project("python", "train.py", "--config", "configs/base_config.yaml", "--out", "runs/vit", "--steps", "5")
    step("The default config moved to RMSNorm; `--resume latest` calls registry.resume, which builds the checkpoint's config")
    in_project("python", "train.py", "--config", "configs/optimized.yaml", "--out", "runs/vit", "--steps", "8",
               "--resume", "latest")
    step("A commit hard-codes RMSNorm in the user's Attention (src/models/attention.py): CI's `registry check` fails")
    attention = project / "src" / "models" / "attention.py"
    attention.write_text(attention.read_text().replace("self.norm = norm_class(use_rms_norm)(dim)", "self.norm = nn.RMSNorm(dim)"))
    in_project("registry", "check", "videovit/baseline", "videovit/optimized", expect=1)


def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="registry-demo-") as workdir:
        work = Path(workdir)
        env = {**os.environ, "REGISTRY_DB": f"sqlite:///{work / 'registry.db'}"}
        ctvit_runs, ldm_runs, unet_runs = work / "runs" / "ctvit", work / "runs" / "ldm", work / "runs" / "unet"

        step("Create the registry (embedded SQLite) and register every built-in variant")
        run("init", env=env)

        print("\n##### Incident 1: the CTViT whose layout moved under a running project")
        step("Train a tiny baseline CTViT for 6 steps, checkpointing every 3")
        run("train", "--variant", "ctvit/tiny", "--out", str(ctvit_runs), "--steps", "6", "--every", "3", env=env)

        latest = ctvit_runs / "step-00000006.pt"
        step("The code's default is now the optimized CTViT: it cannot load the checkpoint, and the diff says why")
        run("match", str(latest), "--variant", "ctvit/tiny-optimized", expect=1, env=env)

        step("The requeued job resumes with `--resume latest`: the registry picks the build the checkpoint needs")
        run("train", "--family", "ctvit", "--out", str(ctvit_runs), "--steps", "9", "--every", "3", "--resume", "latest", env=env)

        step("A commit hard-codes RMSNorm in Attention (the incident's bug): CI's `registry check` fails on it")
        run("check", "ctvit/tiny", "ctvit/tiny-optimized", expect=1, env=env, command=[sys.executable, PLANTED])
        forward_only_regression(env)

        print("\n##### Incident 2: LDM checkpoints and the move to diffusers' UNet")
        step("Train a tiny LDM-layout UNet for 4 steps")
        run("train", "--variant", "ldm-unet/tiny", "--out", str(ldm_runs), "--steps", "4", "--every", "2", env=env)
        ldm_checkpoint = ldm_runs / "step-00000004.pt"

        step("The diffusers UNet refuses the LDM checkpoint as it is")
        naive_load(ldm_checkpoint)
        run("variants", "diff", "ldm-unet/tiny", "diffusers-unet/tiny", env=env)

        step("The registry knows a converter: the checkpoint is convertible, and the conversion is verified")
        run("match", str(ldm_checkpoint), "--family", "diffusers-unet", env=env)
        run("convert", str(ldm_checkpoint), "--to", "diffusers-unet/tiny", "-o", str(work / "unet_step4.safetensors"), env=env)

        step("Resume training as a diffusers UNet at the LDM run's step (converted in memory, AdamW state carried)")
        run("train", "--family", "diffusers-unet", "--out", str(unet_runs), "--steps", "8", "--every", "4",
            "--resume", str(ldm_checkpoint), env=env)

        own_model_chapter(work, env)

        step("Which runs used which architecture: resume chains and conversions")
        run("audit", env=env)

        step("The same story as pages: a static report of the registry (open it in any browser)")
        run("report", "-o", str(REPORT), env=env)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    print(f"report: {REPORT / 'index.html'}")


if __name__ == "__main__":
    main()
