"""Typed configs from YAML: dataclasses in, unknown keys out.

Every config in lonas-ray is a dataclass whose fields carry a one-line help in
``field(metadata={"help": ...})``. ``from_dict`` builds one from plain data and
rejects keys it does not know, naming the closest valid ones, so a typo in a
YAML file fails loudly instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class InputError(Exception):
    """Bad input, or a cluster that cannot run the config: the message names the problem and the fix. The CLI
    prints it and exits 2, without a traceback."""


class ConfigError(InputError, ValueError):
    """A configuration is malformed; the message names the key and the fix."""


def help_field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a help string that docs and ``--help`` reuse."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` where the type asks for a nested dataclass."""
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where=where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if _is_dataclass_type(arg) and isinstance(value, dict):
                return from_dict(arg, value, where=where)
        return value
    if origin in (list, tuple) and args and _is_dataclass_type(args[0]):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and len(args) == 2 and _is_dataclass_type(args[1]):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError``."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints_txt = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hints_txt.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(hints_txt)}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


class YamlConfig:
    """Mixin of the top-level config dataclasses: built from a YAML file or a dict, validated on the way."""

    CONFIG_NAME: typing.ClassVar[str] = "config"  # how error messages name a config given as a dict

    @classmethod
    def from_yaml(cls, path: str | Path):
        return from_dict(cls, load_yaml(path), where=str(path))

    @classmethod
    def from_dict(cls, data: dict):
        return from_dict(cls, data, where=cls.CONFIG_NAME)


def to_dict(obj: Any) -> Any:
    """Plain, YAML/JSON-serialisable data for a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def field_help(cls: type) -> dict[str, str]:
    """Field name -> help string, for docs and CLI help."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
