"""The training project's source package."""
