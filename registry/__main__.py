"""`python -m registry ...` runs the `registry` command (the same as the installed script)."""

from registry.command.cli import main

if __name__ == "__main__":
    main(prog_name="registry")
