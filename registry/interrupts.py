"""Ctrl-C that ends a command cleanly: exit 130, never a C++ abort.

Python turns SIGINT into `KeyboardInterrupt` at the next bytecode, wherever that is. Inside the
import of torch that is sometimes Python code that torch's C++ start-up called (`import torch`
runs `torch._C._c10d_init()`, which imports Python modules): the exception then crosses C++ that
cannot pass it on and the process aborts with `terminate called after throwing an instance of
'pybind11::error_already_set'` (exit 134, about one Ctrl-C in 20 during a `registry scan` that
imports torch half-way). `interrupts_deferred_during_native_imports` holds such a SIGINT back
until the import is done and raises it then, in plain Python code. Likewise while SQLAlchemy's
connection pool resets a connection: it would catch the exception and print its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

# sysexits-style "terminated by SIGINT" (128 + 2): what a shell reports after Ctrl-C.
EXIT_INTERRUPTED = 130
# Packages whose import runs C++ that calls back into Python.
_NATIVE_PACKAGES = ("torch",)
_RETRY_SECONDS = 0.05


def _native_import_running() -> bool:
    """True while a module of a native package is half-imported (its `__spec__._initializing`)."""
    for name, module in list(sys.modules.items()):
        if name.split(".", 1)[0] in _NATIVE_PACKAGES:
            spec = getattr(module, "__spec__", None)
            if spec is not None and getattr(spec, "_initializing", False):
                return True
    return False


def _in_pool_cleanup(frame: Any) -> bool:
    """True inside SQLAlchemy's connection-pool code, which catches an exception raised there
    (e.g. while a garbage-collected connection is reset) and logs it with its traceback."""
    depth = 0
    while frame is not None and depth < 64:
        if f"{os.sep}sqlalchemy{os.sep}pool{os.sep}" in frame.f_code.co_filename:
            return True
        frame, depth = frame.f_back, depth + 1
    return False


# Set by every SIGINT the block below receives: a KeyboardInterrupt that some library caught and
# dropped (seen: about one Ctrl-C in three during `registry schema`) still ends the command as interrupted.
_received = False
# True while `interrupts_deferred_during_native_imports` is active.
_holding = False


def _raise_when_safe(_signum: int, frame: Any) -> None:
    global _received
    _received = True
    if not _native_import_running() and not _in_pool_cleanup(frame):
        raise KeyboardInterrupt
    # Ask again shortly with a real SIGINT to the main thread (it also ends a blocking call there).
    timer = threading.Timer(_RETRY_SECONDS, _ask_again, (threading.main_thread().ident,))
    timer.daemon = True
    timer.start()


def _ask_again(thread_id: int) -> None:
    # Only while the block still holds interrupts back: once it has ended (and raised the
    # interrupt it held), another SIGINT would interrupt the command's clean exit.
    if _holding:
        signal.pthread_kill(thread_id, signal.SIGINT)


@contextmanager
def interrupts_deferred_during_native_imports() -> Iterator[None]:
    """For the duration of the block, a SIGINT raises `KeyboardInterrupt` as usual, except while
    torch is being imported, when it is raised as soon as that import has finished. Does nothing
    outside the main thread or when SIGINT is ignored (a background job); restores the previous
    handler on exit."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    global _received, _holding
    _received, _holding = False, True
    previous = signal.signal(signal.SIGINT, _raise_when_safe)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException:
        # A command also ends by raising (click's `ctx.exit(code)`); an interrupt held back until
        # then (torch still importing) must not be lost with it.
        if _received:
            raise KeyboardInterrupt from None
        raise
    else:
        if _received:  # the interrupt was swallowed on its way out: end as interrupted all the same
            raise KeyboardInterrupt
    finally:
        _holding = False
        signal.signal(signal.SIGINT, previous)


def exit_quietly_while_starting() -> None:
    """Until a command runs, Ctrl-C (Python still importing the command line) exits 130 with one
    line instead of a `KeyboardInterrupt` traceback. Only in the `registry` program itself (the
    installed script or `python -m registry`, which import `registry.entry` first and are covered
    from there; `python cli.py`), never when the module is imported (by tests)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = os.path.basename(sys.argv[0] if sys.argv else "") == "registry" or (
        spec is not None and spec.name == "registry.__main__")
    if program and threading.current_thread() is threading.main_thread():
        from registry.entry import quiet_interrupts

        quiet_interrupts()
