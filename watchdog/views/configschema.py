"""The config's JSON Schema (``batch-watchdog schema``, shipped as
config/watchdog.schema.json for editors): the settings' own schema, with durations as
the patterns the config accepts and defaults written as the config writes them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from watchdog.core.durations import format_duration
from watchdog.settings import Settings

DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _AsWritten(GenerateJsonSchema):
    """Defaults as a config file writes them: ``1m``, not ``PT1M``."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


def json_schema() -> dict[str, Any]:
    """The whole config's schema; every key described (a test holds it so)."""
    schema = Settings.model_json_schema(schema_generator=_AsWritten)
    return {
        "$schema": DIALECT,
        "title": "batch-watchdog configuration",
        "description": "config/watchdog.yaml: see the README's Configuration section. "
        "Secrets never live here: each provider names the environment variable or file "
        "holding its key.",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
