"""The one base of every configuration schema (config file, policies, budgets, pricing,
policy tests): an unknown key is an error that lists the valid ones; values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
