"""The configuration reference, rendered from the config dataclasses' own field help (``help_field``).

One source for code, CLI and docs: ``lonas-ray config-reference`` prints it, ``docs/configuration.md`` is its
output (a test fails when the committed file differs), and a field's help text is written once, where the field
is defined.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    try:
        return f"`{json.dumps(value)}`"
    except TypeError:
        return f"`{value!r}`"


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) of every field of ``cls``, nested sections flattened to dotted keys; a mapping of
    sections (``pools``) is shown under ``<name>``."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.isupper() or not f.init:
            continue
        tp, key = hints[f.name], f"{prefix}{f.name}"
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out.append((key, "section", "", f.metadata.get("help", "")))
            out += rows(tp, f"{key}.")
        elif typing.get_origin(tp) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            out.append((key, f"mapping of name to {args[1].__name__}", _default(f), f.metadata.get("help", "")))
            out += rows(args[1], f"{key}.<name>.")
        else:
            out.append((key, _type_name(tp), _default(f), f.metadata.get("help", "")))
    return out


def render() -> str:
    """docs/configuration.md: the pipeline config (``lonas-ray run``), whose sections the stage configs share."""
    from lonas_ray.pipeline.config import PipelineConfig

    lines = ["# Configuration reference", "",
             "Every key of a `lonas-ray run` config (YAML), with its type, default and meaning. The stage commands "
             "(`lonas-ray train`, `search`) take the same sections. Rendered from the config dataclasses' field "
             "help by `lonas-ray config-reference` (the same text); a test fails when this file differs from a "
             "fresh render.", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, help_text in rows(PipelineConfig):
        cells = [f"`{key}`", tp, default, help_text]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"
