"""The ``data`` section of a run config, and the driver-side check of the files it names.

``DataSpec`` validates what can be seen without opening a file (format, template,
that each file exists); ``check_data`` then reads the files once and stops at the
first unusable record, naming the file and the record. Both run on the driver in
seconds, before any Ray worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lonas_ray.config_io import ConfigError, help_field
from lonas_ray.data import shipped
from lonas_ray.data.records import SCORES_FIELD, SUFFIXES, TARGET_FIELD, iter_file_records, record_problem
from lonas_ray.data.templates import DEFAULT_TEMPLATES, FORMATS, template_problem


@dataclass
class DataSpec:
    """Where the examples come from and how they become prompts and answers."""

    train: str = help_field(
        help="training data: a local .json, .jsonl or .parquet file, or shipped:<task> "
        f"({', '.join(shipped.TASKS)}: its recorded train split)"
    )
    eval: str | None = help_field(
        None, help="evaluation data, same forms as train (shipped:<task>: its recorded test split); optional"
    )
    format: str = help_field(
        "instruction",
        help="record form: instruction ({instruction, input, output}), multiple_choice "
        "(BIG-bench {input, target_scores}) or generation (BIG-bench {input, target}, scored by exact match)",
    )
    instruction_field: str = help_field("instruction", help="record field shown as {instruction} in the template")
    input_field: str = help_field("input", help="record field shown as {input} (the question, for multiple choice)")
    answer_field: str = help_field("output", help="record field with the answer (instruction format)")
    template: str | None = help_field(
        None,
        help="prompt template with {instruction}, {input} (and {choices} for multiple choice); "
        "unset: the format's default; end it with a newline",
    )
    cutoff_len: int = help_field(
        256, help="max tokens of prompt + answer; longer examples lose prompt tokens from the left"
    )
    max_examples: int | None = help_field(
        None, help="use at most this many examples of each of train and eval (a seeded random subset)"
    )
    seed: int = help_field(0, help="seed of the max_examples subset")

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"data.format '{self.format}' is unknown; use one of {', '.join(FORMATS)}")
        for name in ("instruction_field", "input_field", "answer_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"data.{name} must be a non-empty field name, got {getattr(self, name)!r}")
        self.train = self._check_source("train", self.train)
        if self.eval is not None:
            self.eval = self._check_source("eval", self.eval)
        if self.template is not None:
            if not isinstance(self.template, str):
                raise ConfigError(f"data.template must be text, got {type(self.template).__name__}")
            problem = template_problem(self.template, self.format)
            if problem:
                raise ConfigError(f"data.template {problem}: {self.template!r}")
        if not isinstance(self.cutoff_len, int) or self.cutoff_len < 4:
            raise ConfigError(f"data.cutoff_len must be an integer >= 4, got {self.cutoff_len!r}")
        if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
            raise ConfigError(f"data.max_examples must be a positive integer or unset, got {self.max_examples!r}")

    def _check_source(self, key: str, source: str) -> str:
        """The source, its path made absolute (Ray workers run in another directory)."""
        if not isinstance(source, str) or not source:
            raise ConfigError(f"data.{key} must be a file path or shipped:<task>, got {source!r}")
        if shipped.is_shipped(source):
            name = shipped.task_name(source)
            if name not in shipped.TASKS:
                raise ConfigError(
                    f"data.{key} '{source}' is not a shipped task; use one of "
                    + ", ".join(shipped.PREFIX + t for t in shipped.TASKS)
                )
            wanted = shipped.FORMATS[name]
            if self.format != wanted:
                raise ConfigError(
                    f"data.{key} '{source}' is a {wanted.replace('_', '-')} task but data.format is "
                    f"'{self.format}': set format: {wanted}"
                )
            return source
        path = Path(source).expanduser().resolve()
        if path.suffix not in SUFFIXES:
            raise ConfigError(f"data.{key} file {path} has an unsupported type; use one of {', '.join(SUFFIXES)}")
        if not path.is_file():
            raise ConfigError(f"data.{key} file not found: {path}")
        return str(path)

    @property
    def prompt_template(self) -> str:
        """The template in use: ``template`` or the format's default."""
        return self.template if self.template is not None else DEFAULT_TEMPLATES[self.format]

    def record_problem(self, record: object) -> str | None:
        """What makes ``record`` unusable under this spec, or None."""
        return record_problem(
            record, self.format, instruction_field=self.instruction_field, input_field=self.input_field,
            answer_field=self.answer_field,
        )


def check_data(spec: DataSpec) -> None:
    """Read every file of ``spec`` once; ``ConfigError`` naming the file and the first bad record."""
    columns = [spec.instruction_field, spec.input_field, spec.answer_field, SCORES_FIELD, TARGET_FIELD]
    for key, source in (("train", spec.train), ("eval", spec.eval)):
        if source is None:
            continue
        path = shipped.task_path(shipped.task_name(source)) if shipped.is_shipped(source) else Path(source)
        count = 0
        for index, record in enumerate(iter_file_records(path, columns)):
            problem = spec.record_problem(record)
            if problem:
                raise ConfigError(f"data.{key} {path}: record {index} (counting from 0) {problem}")
            count += 1
        if count == 0:
            raise ConfigError(f"data.{key} {path}: the file holds no records")
