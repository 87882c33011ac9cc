"""`python -m registry ...` runs the `registry` command (the same as the installed script)."""

from registry.entry import main  # first: Ctrl-C from here on exits 130 with one line

if __name__ == "__main__":
    main()
