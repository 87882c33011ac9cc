"""Builders of hostile and corrupt checkpoints, made at test time (nothing hostile is stored)."""
