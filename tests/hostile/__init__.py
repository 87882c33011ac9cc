"""Builders of the checkpoints the reader tests use - hostile, corrupt and ordinary - made at test time."""
