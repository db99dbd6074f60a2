"""Configs from YAML: every value checked against its field's annotation, duplicate keys refused (issue 39)."""

from __future__ import annotations

import pytest

from helpers import TINY
from lonas_ray.config_io import ConfigError, check_type, parse_yaml, type_name
from lonas_ray.pipeline.config import PipelineConfig
from lonas_ray.train.config import DeepSpeedSpec


def test_a_key_given_twice_is_refused_naming_it_and_both_lines():
    with pytest.raises(ConfigError, match=r"^c\.yaml: key 'steps' is given twice in one mapping, on lines 3 and 5; "
                                          r"keep one of them"):
        parse_yaml("train:\n  optim:\n    steps: 6\n    lr: 0.1\n    steps: 60\n", "c.yaml")
    # the same key in two mappings, and YAML merge keys, are fine
    assert parse_yaml("a: {x: 1}\nb: {x: 2}\n", "c.yaml") == {"a": {"x": 1}, "b": {"x": 2}}
    assert parse_yaml("base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n", "c.yaml")["d"] == {"x": 1, "y": 2}
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("a: [1\n", "c.yaml")


def test_no_python_object_is_built_from_a_yaml_tag():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("a: !!python/object/apply:os.system ['true']\n", "c.yaml")


@pytest.mark.parametrize("tp, value, message", [
    (int, "40", "k: expected an integer, got str '40'; write it without quotes"),
    (float, "1e-4", "k: expected a number, got str '1e-4'; YAML reads 1e-4 as a string: write 1.0e-4"),
    (float, "fast", "k: expected a number, got str 'fast'; write a number"),
    (int, 2.0, "k: expected an integer, got float 2.0; write a whole number, such as 2"),
    (int, False, "k: expected an integer, got bool False; write an integer, not true or false"),
    (int | None, "x", "k: expected an integer or null, got str 'x'; write an integer$"),
    (int, None, "k: expected an integer, got null; give a value, or remove the key to take the default"),
    (list[str], "a", "k: expected a list of strings, got str 'a'"),
    (list[int], [1, "b"], r"k\[1\]: expected an integer, got str 'b'"),
    (dict[str, float], {"CPU": []}, r"k\.CPU: expected a number, got list \[\]"),
    (dict[str, float], [], "k: expected a mapping of numbers, got list"),
    (bool, "true", "k: expected true or false, got str 'true'"),
])
def test_a_value_of_the_wrong_type_names_the_key_the_type_and_the_value(tp, value, message):
    with pytest.raises(ConfigError, match="^" + message):
        check_type(tp, value, "k")


@pytest.mark.parametrize("tp, value", [
    (float, 3), (int | None, None), (list[float | int], [1, 0.5]), (dict[int, list[int]], {"0": [1]}),
    (dict[int, list[int]], {0: [1]}), (bool | str, True), (bool | str, "auto"), (dict, {"any": object()}),
])
def test_values_that_fit_their_annotation_pass(tp, value):
    check_type(tp, value, "k")  # an int where a float goes; JSON's digit keys for int keys; optional null


def test_type_names_read_as_english():
    assert type_name(list[str]) == "a list of strings" and type_name(int | None) == "an integer or null"
    assert type_name(dict[str, float]) == "a mapping of numbers" and type_name(bool) == "true or false"


def test_a_config_files_errors_name_the_file_then_the_full_dotted_key(tmp_path):
    text = TINY.read_text().replace("optim: {steps: 6,", "optim: {steps: six,")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}: train\.optim\.steps: expected an integer, got str 'six'"):
        PipelineConfig.from_yaml(path)


def test_bf16_takes_true_false_or_auto_as_written_in_yaml():
    assert DeepSpeedSpec(bf16=True).bf16 is True and DeepSpeedSpec(bf16="auto").bf16 == "auto"
    with pytest.raises(ConfigError, match="deepspeed.bf16 must be auto, true or false"):
        DeepSpeedSpec(bf16="maybe")
