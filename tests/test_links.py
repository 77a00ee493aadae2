"""Every relative link in the README, docs/ and the committed reports leads to a file that exists (the
narratives moved to docs/ once and their links to results/ broke silently)."""

from __future__ import annotations

import re

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").rglob("*.md"))]
    broken = [f"{md.relative_to(ROOT)}: {target}" for md in pages for target in LINK.findall(md.read_text())
              if not re.match(r"[a-z]+:", target) and not (md.resolve().parent / target).exists()]
    assert not broken, broken
