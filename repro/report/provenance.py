"""Ledger discipline: the commit that last changed a claims ledger (a citation-only edit does not count),
and for each run whether it started from a commit containing it, on a clean tree.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from repro.config import CONF_DIR
from repro.runs.records import Run

ROOT = Path(CONF_DIR).parent  # the repository: where git answers about ledgers


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=10)


# A citation in parentheses, "(§4.2.2)" or the notes-file form issue 12 replaced: re-citing does not change a ledger.
_CITATION = re.compile(r"(?:facts )?§ ?[0-9]+(?:\.[0-9]+)*")  # a section number, cited in any form


def _ledger_commit(path: Path) -> tuple[str | None, str | None, str | None]:
    """The last commit that changed the ledger other than in its citations (issue 12 re-cited the paper's
    sections in place of a notes file's), so runs made before such an edit still count as after it; its
    date; and the ledger's first commit."""
    log = _git("log", "--format=%H %cI", "--", str(path))
    if log.returncode != 0 or not log.stdout.strip():
        return None, None, None
    commits = [line.split() for line in log.stdout.splitlines()]
    first = commits[-1][0]
    try:
        rel = path.relative_to(ROOT).as_posix()
    except ValueError:  # a ledger outside this repository: its last commit, as git knows it
        return (*commits[0], first)
    for sha, date in commits:
        now, before = (_git("show", f"{rev}:{rel}") for rev in (sha, f"{sha}^"))
        if before.returncode != 0 or _CITATION.sub("§", now.stdout) != _CITATION.sub("§", before.stdout):
            return sha, date, first
    return (*commits[-1], first)


def ledger_provenance(claims_path: Path, runs: list[Run]) -> dict:
    """The ledger's last commit, and for each run whether its recorded commit contains that one and was clean."""
    path = Path(claims_path).resolve()
    ledger, date, first = _ledger_commit(path)
    edited = bool(_git("status", "--porcelain", "--", str(path)).stdout.strip())
    out = {"ledger_commit": ledger, "ledger_date": date, "ledger_edited": edited, "runs": {}}
    for r in runs:
        commit = r.env.get("git_commit") or ""
        sha, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
        if not sha:
            state = "no commit recorded"
        elif ledger and _git("merge-base", "--is-ancestor", ledger, sha).returncode == 0:
            state = "after the ledger, dirty tree" if dirty else "after the ledger, clean tree"
        elif _git("cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
            state = "commit unknown to this repository"
        elif first and first != ledger and _git("merge-base", "--is-ancestor", first, sha).returncode == 0:
            # a revised ledger: the run came after its first version, and the revision says what it read
            state = "after the ledger's first version, before its last revision" + (", dirty tree" if dirty else "")
        else:
            state = "before the ledger" + (", dirty tree" if dirty else "")
        out["runs"][r.name] = {"commit": commit, "state": state}
    return out
