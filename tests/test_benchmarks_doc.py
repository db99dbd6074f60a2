"""docs/benchmarks.md is rendered from docs/benchmarks.template.md and jobs/results/*.json by
``jobs/render_benchmarks.py``: the committed file must be a fresh render, so no figure in it can drift from the
JSON its run wrote, and a placeholder naming a JSON that is not there must fail loudly rather than render empty.
Fast: reads files, starts nothing."""

from __future__ import annotations

import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "jobs"))
import render_benchmarks  # noqa: E402


def test_the_committed_benchmarks_doc_is_a_fresh_render_of_the_template_and_the_json():
    committed = (ROOT / "docs" / "benchmarks.md").read_text()
    assert committed == render_benchmarks.render(), (
        "docs/benchmarks.md differs from a fresh render of docs/benchmarks.template.md and jobs/results/*.json: "
        "edit the template (or the JSON), then run `python jobs/render_benchmarks.py`")


def test_a_placeholder_naming_a_json_that_does_not_exist_fails_naming_it(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("# t\n\n{{table: quality_rows(bench_quality_no_such_run)}}\n")
    with pytest.raises(render_benchmarks.RenderError, match=r"bench_quality_no_such_run\.json, which does not exist"):
        render_benchmarks.render(template)


def test_an_unknown_renderer_or_a_malformed_placeholder_fails_rather_than_rendering_as_text(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("{{table: no_such_renderer(bench_load_cpu)}}\n")
    with pytest.raises(render_benchmarks.RenderError, match="no renderer 'no_such_renderer'"):
        render_benchmarks.render(template)
    template.write_text("text {{table: load(bench_load_cpu)}} inline\n")
    with pytest.raises(render_benchmarks.RenderError, match="malformed placeholder"):
        render_benchmarks.render(template)
