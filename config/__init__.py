"""Example configs, shipped inside the package as ``watchdog.config`` (see pyproject.toml)."""
