"""The one base of every configuration schema (config file, policies, budgets, pricing,
policy tests): an unknown key is an error that lists the valid ones; values are frozen;
a validation error is said in one line."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def error_text(exc: ValidationError, data: Mapping[str, Any], root: type[BaseModel]) -> str:
    """The first error validating ``data`` as ``root`` in one line, as 'policy NAME:
    field: problem' (an unknown key with the valid ones), plus how many more."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    message = _message(first, loc, root)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return _one_line(f"{_where(loc, data)}{message}{more}")


def _one_line(text: str) -> str:
    """Keys and values come from the file: a newline or escape in one is shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


NAMED = {"policies": "policy", "budgets": "budget"}  # lists whose entries have a name


def _where(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    if len(loc) >= 2 and loc[0] in NAMED and isinstance(loc[1], int):
        entries = data.get(loc[0])
        name = None
        if isinstance(entries, list) and loc[1] < len(entries):
            entry = entries[loc[1]]
            name = entry.get("name") if isinstance(entry, dict) else None
        label = f"{NAMED[loc[0]]} {name!r}" if name else f"{loc[0]}[{loc[1]}]"
        field = ".".join(str(p) for p in loc[2:]) or f"({NAMED[loc[0]]})"
        return f"{label}: {field}: "
    field = ".".join(str(p) for p in loc)
    return f"{field}: " if field else ""


def _message(error: Any, loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(loc[:-1], root)
        return "unknown key" + (f"; valid keys: {', '.join(valid)}" if valid else "")
    if kind == "literal_error":
        return str(error["msg"]).replace("Input should be", "must be")
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_type" and isinstance(error.get("input"), bool):
        # PyYAML (YAML 1.1) reads a bare off, on, yes, no as a boolean.
        word = "off" if error["input"] is False else "on"
        message += f'; YAML reads a bare {word}, yes or no as a boolean: quote it ("{word}")'
    return message


def _valid_keys(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is not None:  # else a dict key, such as a provider's name
            model = model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def model_in(annotation: Any) -> Any:
    """The pydantic model an annotation holds (``X | None``, ``dict[str, X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None
