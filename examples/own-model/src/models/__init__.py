"""The project's own models. The registry needs no code here: pyproject.toml names the class."""
