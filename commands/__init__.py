"""The `registry` commands, one module per noun; installed as `registry.command.commands`.

Each module defines plain click commands or groups and registers nothing itself: `cli.py` owns the
`main` group and adds every command with one `main.add_command(...)` line, so the list of what
`registry` offers is in one place. A new noun is a new module here plus its lines in `cli.py`.

Modules import only click and `_output` at the top; everything heavy (torch, SQLAlchemy, the
store, the readers) is imported inside the command functions, so `registry --help` and
`registry fingerprint` stay fast.
"""
