"""`verify` covers what a reader sees: a value only a plot draws, a number in the README's results, rule.md
and the GPU reports each fail it when changed; a changed verdict is named by its words."""

from __future__ import annotations

import shutil

from repro.report import read_long, write_long
from repro.report.pipeline import compare, verify, verify_pages
from repro.report.readme import verify_readme
from tests.conftest import ROOT

RESULTS = ROOT / "results"


def test_a_changed_plotted_value_fails_verify(tmp_path):
    """fig1_bn seed 1 at step 27,000: no table prints it, Figure 1(a) draws it."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "fig1" / "cpu", results / "fig1" / "cpu")
    assert verify(results) == []
    path = results / "fig1" / "cpu" / "runs.csv"
    long = read_long(path)
    bn1 = next(r for r, s, *_ in long.rows if r.startswith("fig1_bn-") and s == 1)
    rows = [(r, s, t, m, v - 0.01 if (r, t, m) == (bn1, 27000, "test_acc") else v) for r, s, t, m, v in long.rows]
    assert rows != long.rows
    write_long(path, rows)
    problems = verify(results)
    assert problems and all("fig1a.png: plotted data differ" in p for p in problems)
    assert any("With BN" in p for p in problems)  # the element is named: BN's mean line


def test_a_changed_readme_result_number_fails_verify(tmp_path):
    assert verify_readme(ROOT, RESULTS) == []
    readme = (ROOT / "README.md").read_text()
    assert "[-412.7, 271.9]" in readme  # the map's gap at the baseline's best setting, as its report prints it
    (tmp_path / "README.md").write_text(readme.replace("[-412.7, 271.9]", "[-412.7, 271.8]", 1))
    assert [p.split(": ", 1)[1] for p in verify_readme(tmp_path, RESULTS)] == [
        f"271.8 appears in no committed report under {RESULTS}"]


def test_a_changed_rule_md_or_gpu_report_fails_verify(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "fig1" / "map", results / "fig1" / "map")
    shutil.copy(RESULTS / "fig1" / "rule.md", results / "fig1" / "rule.md")
    shutil.copytree(RESULTS / "gpu", results / "gpu")
    assert verify_pages(results) == []
    rule = results / "fig1" / "rule.md"
    rule.write_text(rule.read_text().replace("0.9658 **(best)**", "0.9668 **(best)**"))
    gpu = next((results / "gpu").rglob("report.md"))
    gpu.write_text(gpu.read_text().replace("images/s", "img/s", 1))
    problems = verify_pages(results)
    assert any(str(rule) in p and "committed 0.9668, rebuilt 0.9658" in p for p in problems)
    assert any(str(gpu) in p for p in problems)


def test_a_changed_verdict_is_named_by_its_words():
    old = "| bn_ahead_10k | p | 1: 0.0031 | 0.0032 ± 0.00036 | [0.0023, 0.0041] | > 0 | reproduced | 3 of 3 |"
    new = old.replace("| reproduced |", "| inconclusive |")
    assert compare(old, new) == ["line 1 (bn_ahead_10k): verdict reproduced → inconclusive"]
    long_line = "x " * 100 + "the end"
    (problem,) = compare(long_line, long_line.replace("the end", "another end"))
    assert "'the' → 'another'" in problem  # the change itself, however far into the line
