"""Citations point at the paper's own sections, never at a file outside the repository; re-citing a
claims ledger does not move the commit that fixed its thresholds; a run between a ledger's first version
and its revision is told apart from one before the ledger."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

from repro.report import provenance
from tests.conftest import ROOT


def test_nothing_cites_a_notes_file_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    offenders = [f for f in files if (ROOT / f).is_file() and f != "tests/test_citations.py"
                 and any(s in (ROOT / f).read_text(errors="replace") for s in ("facts §", "bn-paper-facts"))]
    assert offenders == []
    assert (ROOT / "docs" / "paper-notes.md").is_file()


def test_a_citation_only_edit_keeps_the_ledger_commit(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    ledger = tmp_path / "claims.yaml"
    for text, msg in [("# ledger (facts §5)\nbar: 3  # §2 says so\n", "thresholds"), ("# ledger (§4.2.2)\nbar: 3  # §4.1 says so\n", "re-cite"),
                      ("# ledger (§4.2.2), per seed\nbar: 3  # §4.1 says so\n", "comment")]:
        ledger.write_text(text)
        git("add", "claims.yaml")
        git("commit", "-qm", msg)
        if msg == "thresholds":
            fixed = git("rev-parse", "HEAD")
        if msg == "re-cite":
            monkeypatch.setattr(provenance, "ROOT", tmp_path)
            assert provenance.ledger_provenance(ledger, [])["ledger_commit"] == fixed
    assert provenance.ledger_provenance(ledger, [])["ledger_commit"] == git("rev-parse", "HEAD")  # other edits count


def test_runs_are_placed_against_a_revised_ledger(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    ledger, commits = tmp_path / "protocol.yaml", {}
    for name, text in [("before", None), ("first", "bar: 3\n"), ("between", None), ("revision", "bar: 3\nchance: 1\n"),
                       ("after", None)]:
        (tmp_path / ("protocol.yaml" if text else "code.py")).write_text(text or name)
        git("add", "-A")
        git("commit", "-qm", name)
        commits[name] = git("rev-parse", "HEAD")
    made = [SimpleNamespace(name=n, env={"git_commit": commits[n] + ("-dirty" if n == "after" else "")})
            for n in ("before", "between", "after")]
    got = provenance.ledger_provenance(ledger, made)
    assert got["ledger_commit"] == commits["revision"]
    assert {n: r["state"] for n, r in got["runs"].items()} == {
        "before": "before the ledger", "between": "after the ledger's first version, before its last revision",
        "after": "after the ledger, dirty tree"}
