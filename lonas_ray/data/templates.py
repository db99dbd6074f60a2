"""Prompt templates: the defaults, their validation, and rendering a record into a prompt.

A template is a ``str.format`` string with named placeholders only:
``{instruction}`` and ``{input}`` (both formats) and ``{choices}`` (multiple
choice: the choices, one ``- choice`` line each, in the record's order). Write
``{{`` and ``}}`` for literal braces. Field values are stripped of surrounding
whitespace; a field a record lacks renders as an empty string.

The answer is tokenized on its own and appended to the prompt's tokens, so the
boundary falls exactly between them. End a template with a newline (as the
defaults do) rather than a space: BPE tokenizers split a trailing space off as
a token of its own, which running text never has.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

FORMATS = ("instruction", "multiple_choice", "generation")
PLACEHOLDERS = {
    "instruction": ("instruction", "input"),
    "multiple_choice": ("instruction", "input", "choices"),
    "generation": ("instruction", "input"),
}
DEFAULT_TEMPLATES = {
    "instruction": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "multiple_choice": "Question: {input}\nChoices:\n{choices}\nAnswer:\n",
    "generation": "Question: {input}\nAnswer:\n",
}


def placeholders(template: str) -> list[str]:
    """The placeholder names of ``template``, in order; ``ValueError`` if it is malformed."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} has a conversion or format spec; write plain {{{name}}}")
        names.append(name)
    return names


def template_problem(template: str, fmt: str) -> str | None:
    """Why ``template`` cannot render records of format ``fmt``, or None when it can."""
    allowed = PLACEHOLDERS[fmt]
    try:
        names = placeholders(template)
    except ValueError as exc:
        return f"is malformed ({exc}); write {{{{ and }}}} for literal braces"
    unknown = [n for n in names if n not in allowed]
    if unknown:
        shown = ", ".join("{" + n + "}" for n in unknown)
        return f"has unknown placeholder(s) {shown}; format '{fmt}' allows " + ", ".join(
            "{" + n + "}" for n in allowed
        )
    if fmt in ("multiple_choice", "generation") and "input" not in names:
        return "lacks {input}: the prompt must show the question"
    if "input" not in names and "instruction" not in names:
        return "has neither {instruction} nor {input}: every prompt would be the same"
    return None


def format_choices(choices: Sequence[str]) -> str:
    """The ``{choices}`` text: one ``- choice`` line each, in order."""
    return "\n".join(f"- {str(c).strip()}" for c in choices)


def render(template: str, *, instruction: str = "", input: str = "", choices: Sequence[str] = ()) -> str:
    """The prompt for one record."""
    return template.format(
        instruction=str(instruction or "").strip(),
        input=str(input or "").strip(),
        choices=format_choices(choices),
    )
