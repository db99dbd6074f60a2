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


# Every value is checked against its field's annotation before a config's own checks run, so a wrong type is named
# with its full key, what was expected and what came, instead of surfacing as a comparison of str with int.
_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def type_name(tp: Any) -> str:
    """How an error message names what a field holds: ``an integer``, ``a list of strings``, ``a number or null``."""
    if tp is Any or tp is object:
        return "anything"
    if tp in _SCALARS:
        return _SCALARS[tp]
    if tp is type(None):
        return "null"
    if _is_dataclass_type(tp) or tp is dict:
        return "a mapping"
    if tp in (list, tuple):
        return "a list"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in sorted(args, key=lambda a: a is type(None)))
    if origin in (list, tuple, set):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict:
        return f"a mapping of {_plural(args[1])}" if args else "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    """``strings`` for ``str``: the elements' name in ``a list of ...``."""
    return type_name(tp).removeprefix("an ").removeprefix("a ") + "s"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fix(tp: Any, value: Any) -> str:
    """The hint that follows a type error: what to write instead."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:  # an optional value: the hint of the value it may be
            return _fix(options[0], value)
    if value is None:
        return "give a value, or remove the key to take the default"
    if isinstance(value, str) and tp in (int, float) and _numeric(value):
        return ("YAML reads 1e-4 as a string: write 1.0e-4" if tp is float and "e" in value.lower()
                else "write it without quotes")
    if isinstance(value, bool) and tp in (int, float):
        return f"write {type_name(tp)}, not true or false"
    if isinstance(value, float) and tp is int:
        return f"write a whole number, such as {int(value)}"
    return f"write {type_name(tp)}"


def check_type(tp: Any, value: Any, where: str) -> None:
    """``ConfigError`` naming ``where`` (the full dotted key), the type ``tp`` expects and ``value`` when it does not
    fit; nested lists and mappings are checked element by element (a dataclass's own fields by ``from_dict``)."""
    def fail(at: str, want: Any, got: Any) -> None:
        raise ConfigError(f"{at}: expected {type_name(want)}, got {type(got).__name__ if got is not None else 'null'}"
                          f"{'' if got is None else f' {got!r}'}; {_fix(want, got)}")

    if tp is Any or tp is object:
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return
        for option in options:
            try:
                check_type(option, value, where)
                return
            except ConfigError:
                continue
        fail(where, tp, value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif _is_dataclass_type(tp):
        ok = isinstance(value, (dict, tp))
    elif tp is dict or origin is dict:
        if not isinstance(value, dict):
            fail(where, tp, value)
        if len(args) == 2:
            for k, v in value.items():
                key_ok = isinstance(k, args[0]) or (args[0] is int and isinstance(k, str) and k.lstrip("-").isdigit())
                if not key_ok:  # JSON turns an int key into its digits: those are taken
                    raise ConfigError(f"{where}: key {k!r} must be {type_name(args[0])}")
                check_type(args[1], v, f"{where}.{k}")
        return
    elif tp in (list, tuple) or origin in (list, tuple, set):
        if not isinstance(value, (list, tuple)):
            fail(where, tp, value)
        if args:  # list[X], tuple[X, ...]: every element an X
            for i, v in enumerate(value):
                check_type(args[0], v, f"{where}[{i}]")
        return
    elif origin is typing.Literal:
        ok = value in args
    else:  # a type these configs do not use: not guessed at
        return
    if not ok:
        fail(where, tp, value)


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
    """Build dataclass ``cls`` from ``data``; unknown keys and values of the wrong type raise ``ConfigError``.

    ``where``: the dotted key of ``data`` (errors name ``where.key``); "" for a config file's root, whose
    keys are named as they are (``from_yaml`` puts the file's path in front).
    """
    data = dict(data or {})
    at = f"{where}: " if where else ""

    def key(name: str) -> str:
        return f"{where}.{name}" if where else name

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints_txt = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hints_txt.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(
            f"{at}unknown key(s) {', '.join(hints_txt)}; valid keys: {', '.join(sorted(fields))}"
        )
    for name, value in data.items():
        check_type(hints[name], value, key(name))
    kwargs = {name: _convert(hints[name], value, key(name)) for name, value in data.items()}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{at}missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{at}{exc}") from exc


class YamlConfig:
    """Mixin of the top-level config dataclasses: built from a YAML file or a dict, validated on the way."""

    CONFIG_NAME: typing.ClassVar[str] = "config"  # how error messages name a config given as a dict

    @classmethod
    def from_yaml(cls, path: str | Path):
        try:
            return from_dict(cls, load_yaml(path), where="")
        except ConfigError as exc:
            if str(exc).startswith(str(path)):  # load_yaml's own errors already name the file
                raise
            raise ConfigError(f"{path}: {exc}") from None

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


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key '{key}' is given twice in one mapping, on lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice: the YAML spec forbids it, and PyYAML
    otherwise keeps the last silently, so a user who wrote ``steps`` twice would get one of the two unasked."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, it names no key of its own
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
        except TypeError:  # an unhashable key: PyYAML's own error names it
            break
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as data, refusing duplicate keys; errors name ``where`` (a file) and the fix."""
    try:
        loader = _UniqueKeyLoader(text)  # a SafeLoader: no Python objects are built from tags
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _DuplicateKey as exc:
        raise ConfigError(f"{where}: {exc}; keep one of them (YAML allows a key once per mapping)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file (duplicate keys refused, ``parse_yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = parse_yaml(path.read_text(), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def field_help(cls: type) -> dict[str, str]:
    """Field name -> help string, for docs and CLI help."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
