"""Typed configuration: YAML files plus `dotted.key=value` command-line overrides.

Every config section is a `StrictModel` (pydantic, unknown keys forbidden). `load_config` merges
YAML and overrides, validates once, and turns pydantic's errors into one readable `ConfigError`
that names the valid keys where a key is unknown or misspelt.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="StrictModel")


class ConfigError(ValueError):
    """A config file or override is invalid; the message says what and where."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['a.b=3', 'c=[1,2]'] -> {'a': {'b': 3}, 'c': [1, 2]}; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `update` merged into `base` recursively (update wins)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _valid_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model section that `loc` (minus its last element) points into."""
    cls = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return sorted(cls.model_fields)


def validate_config(model_cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Validate a plain dict into `model_cls`, raising ConfigError with readable messages."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "<root>"
            if e["type"] == "extra_forbidden":
                valid = _valid_keys(model_cls, e["loc"])
                lines.append(f"unknown key '{where}'; valid keys here: {', '.join(valid)}")
            else:
                lines.append(f"'{where}': {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(model_cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Read YAML at `path` (or start from defaults when None), apply overrides, validate."""
    data = load_yaml(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(list(overrides)))
    return validate_config(model_cls, data, source=str(path or "defaults"))


def config_to_yaml(config: BaseModel) -> str:
    """The resolved config as YAML (saved next to every artefact it produced)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
