"""The documentation says what the code and CI do: the README's commands are the ones `.ci/run` and the tests run,
and every relative link in the docs reaches a file."""

from __future__ import annotations

import re

from helpers import ROOT, TINY

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md")),
        *sorted(ROOT.glob("infra/*/README.md"))]


def section_commands(heading: str) -> list[str]:
    """The commands of the first ```bash block under the README's ``## heading``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {heading}")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, f"README section {heading!r} has no bash block"
    lines = [line.split(" #")[0].strip() for line in block.group(1).replace("\\\n", " ").splitlines()]
    return [line for line in lines if line]


def ci_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_ci_runs_the_readmes_set_up_command_then_its_test_command():
    (setup,) = section_commands("Install (set-up command)")
    ci = "\n".join(ci_lines())
    for step in (s.strip() for s in setup.split("&&")):
        quiet = step.replace("pip install ", "pip install -q ", 1)  # CI adds -q; the rest word for word
        assert quiet in ci, step
    (test,) = section_commands("Test")
    assert test in ci_lines(), f"README's test command {test!r} is not a line of .ci/run"


def test_the_readmes_run_commands_are_the_cli_default_and_the_config_the_tests_submit():
    from lonas_ray.cli import QUICKSTART

    commands = section_commands("Run (quick start)")
    assert commands == ["lonas-ray run"]
    assert (ROOT / QUICKSTART).is_file()  # what `lonas-ray run` runs with no --config
    readme = (ROOT / "README.md").read_text()
    tiny = TINY.relative_to(ROOT).as_posix()
    assert f"`lonas-ray run --config {tiny} --output out/tiny`" in readme  # the pipeline tests submit TINY


def test_every_relative_link_in_the_docs_reaches_a_file():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"\w+://|mailto:", target):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_readmes_quick_start_figures_are_a_fresh_render_of_a_recorded_run():
    """The quick start's table and verdict come from a real run's summary.json (jobs/results/quickstart_cpu.json,
    `python jobs/render_quickstart.py --record out/quickstart`), never typed in: the README is that render."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "jobs"))
    import render_quickstart

    rec = json.loads(render_quickstart.RECORD.read_text())
    text = (ROOT / "README.md").read_text()
    assert render_quickstart.render_readme(text, rec) == text, \
        "README.md's quick-start figures are stale: run `python jobs/render_quickstart.py`"
    block = text[text.index(render_quickstart.BEGIN):text.index(render_quickstart.END)]
    summary = rec["summary"]
    assert summary["deployment"]["text"] in block and rec["machine"]["cpu_model"] in block
    assert f"| baseline (plain LoRA) | {summary['baseline']['quality']:.3f}" in block
