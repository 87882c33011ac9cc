"""The `registry` program's first code: the console script (setup.cfg) and `python -m registry`.

Ctrl-C while Python is still importing the command line (click, the command modules: about 50 ms,
more on a loaded machine) would otherwise print a `KeyboardInterrupt` traceback. So this module
imports nothing that is not already loaded when Python has started (`os`) or built into the
interpreter (`_signal`) and, as it is imported, makes SIGINT exit at once with one line and exit
130. Once a command runs, `cli.py` replaces that with `registry.interrupts`' handling (Ctrl-C
mid-command: clean up, then exit 130). What runs before this module (the interpreter's own start-up and
`site`, which processes the installed `.pth` files) is out of any package's reach.

Only the program imports this module: importing it elsewhere would replace the SIGINT handler.
"""

import _signal as signal  # the built-in module itself: `signal` would import enum first
import os

# 128 + SIGINT: what a shell reports after Ctrl-C.
EXIT_INTERRUPTED = 130


def exit_interrupted(_signum, _frame):
    """SIGINT handler for while nothing is open yet (or any more): one line on stderr, exit 130."""
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def quiet_interrupts() -> None:
    """Install `exit_interrupted` for SIGINT unless the program has a handler already (or ignores
    SIGINT, as a background job does). Only the main thread can install a handler."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        try:
            signal.signal(signal.SIGINT, exit_interrupted)
        except ValueError:  # not the main thread
            pass


quiet_interrupts()


def main() -> None:
    """Run the `registry` command line (exits with its exit code)."""
    from registry.command.cli import main as command_line

    try:
        command_line(prog_name="registry")
    finally:
        settled()


def settled() -> None:
    """The command has answered: flush its output, then let a later Ctrl-C end the process the
    default way (killed by SIGINT; a shell shows 130). Python runs its own handler only between
    bytecodes, so a SIGINT arriving while the interpreter shuts down (100-200 ms with torch
    loaded) was otherwise dropped, and the process exited 0 as if never interrupted."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass

