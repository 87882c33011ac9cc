"""Ctrl-C at any moment of the `registry` program's start: exit 130 and one line, no traceback.

The installed script's entry point is `registry.entry`, which imports nothing new and installs the
SIGINT handling before the command line (click, the command modules) is imported. What runs
before it, the interpreter's start-up and `site` with the installed `.pth` files (an editable
install's finder imports pathlib and re there: 10-60 ms on a loaded machine), no package can
reach. So each run waits until `registry.entry` has been imported (PYTHONVERBOSE reports each
import on stderr as it completes) and sends SIGINT after a delay counted from there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REGISTRY = str(Path(sys.executable).with_name("registry"))
ENTRY_IMPORTED = "import 'registry.entry'"


def interrupt_after_entry(argv: list[str], delay: float) -> tuple[int, str]:
    """Start `argv`, send SIGINT `delay` seconds after `registry.entry` is imported; returns the
    exit code and stderr."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONVERBOSE": "1"})
    lines: list[str] = []
    reached = threading.Event()

    def drain() -> None:  # always read stderr: a full pipe would block the program mid-write
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if line.startswith(ENTRY_IMPORTED):
                reached.set()
        reached.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        reached.wait(60)
        assert any(line.startswith(ENTRY_IMPORTED) for line in lines), "registry.entry was never imported"
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    return process.returncode, "".join(lines)


CASES = [
    *[([REGISTRY, "--help"], delay) for delay in (0.0, 0.01)],
    *[([REGISTRY, "families"], delay) for delay in (0.0, 0.005, 0.01, 0.03)],
    # long enough (imports torch) that every delay lands before it ends
    *[([REGISTRY, "schema", "ctvit", "--variant", "ctvit/tiny"], delay) for delay in (0.0, 0.02, 0.06, 0.1)],
    *[([sys.executable, "-m", "registry", "families"], delay) for delay in (0.0, 0.01)],
]


@pytest.mark.parametrize(("argv", "delay"), CASES,
                         ids=[f"{' '.join(a[1:] if a[0] == REGISTRY else a[1:3])}-{int(d * 1000)}ms" for a, d in CASES])
def test_ctrl_c_while_the_program_starts_exits_130_with_one_line(argv, delay):
    code, stderr = interrupt_after_entry(argv, delay)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    assert code == 130, (code, stderr[-2000:])
    assert "interrupted\n" in stderr  # (the verbose import lines may leave a line unfinished before it)


def test_the_console_script_enters_through_the_light_module():
    """The installed script imports `registry.entry`, which loads neither click nor the command line."""
    script = Path(REGISTRY).read_text()
    assert "from registry.entry import main" in script, script
    program = "import sys\nbefore = set(sys.modules)\nimport registry.entry\nprint(sorted(set(sys.modules) - before))"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "['registry', 'registry.entry']", done.stdout + done.stderr
