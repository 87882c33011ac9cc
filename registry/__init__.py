"""Model registry with versioned architecture schemas for PyTorch checkpoints.

The library is the product; `registry.command.cli` (the repository's `cli.py`) is a thin click
layer over it.  Importing this package is cheap: torch, diffusers and SQLAlchemy are imported
only by the functions that need them.
"""

__version__ = "0.1.0"
