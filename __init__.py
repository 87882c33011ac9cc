"""Installed as `registry.command` (see setup.cfg): the repository root is mapped to that package so
that `cli.py` ships as `registry.command.cli` (and `commands/`, one module per noun, as
`registry.command.commands`) and claims no top-level `cli` import name. It holds nothing else;
`tests/test_packaging.py` checks that no other root module is installed.
"""
