"""Where training already happens: Accelerate (`registry.integrations.accelerate`) and PyTorch
Lightning (`registry.integrations.lightning`). Each module imports its framework only when used,
so neither is needed to install the registry; `pip install 'model-registry[accelerate]'` or
`'[lightning]'` brings it."""
