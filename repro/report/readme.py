"""`verify` for what the README says: every number in its results sections (and in a results page under
docs/ that it links) must appear in a committed report, to the precision the README prints it.

A README number matches a report number when the report's, rounded to the README's decimals, equals it,
read as is, or by the unit printed after it: a percentage or points as a fraction (97.46% for 0.9746). Section, figure, algorithm, table and issue numbers are citations,
not results, and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

# A number as prose prints it: 1,403.8 / -0.0061 / 95% / 2.3x; not part of a word, a path or a citation.
NUMBER = re.compile(r"(?<![\w.§/-])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?=%|x\b|[^\w.,]|[.,](?!\d)|$)")
CITATION = re.compile(r"(?:§|Figures?|Fig\.|Alg\.|Table|issue|Issue|commit|#|Python|torch|CUDA|cuDNN|timm|v)\s*$")
CODE = re.compile(r"`[^`]*`|\]\([^)]*\)|https?://\S+")  # inline code, link targets and URLs are not prose


RESULT_SECTIONS = ("Results", "Claims")  # README sections that state results (headings starting so)
NOT_RESULTS = ("Known differences",)  # sections of a linked results page that state no measured number


def _sections(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^## ([^\n]*)\n(.*?)(?=^## |\Z)", text, re.S | re.M)]


def results_text(root: Path) -> list[tuple[str, str]]:
    """(where, text) of each results section: the README's (RESULT_SECTIONS) and those of the docs/ pages
    they link (all but NOT_RESULTS)."""
    out, pages = [], []
    for title, body in _sections((Path(root) / "README.md").read_text()):
        if title.startswith(RESULT_SECTIONS):
            out.append((f"README.md, section '{title}'", body))
            for page in re.findall(r"\]\((docs/[^)#]+\.md)", body):
                if page not in pages and (Path(root) / page).exists():
                    pages.append(page)
    for page in pages:
        out += [(f"{page}, section '{t}'", b) for t, b in _sections((Path(root) / page).read_text())
                if not t.startswith(NOT_RESULTS)]
    return out


def numbers(text: str) -> list[tuple[str, int, str]]:
    """(number as printed, its decimals, the word after it) for each result number in prose `text`."""
    text = CODE.sub(" ", text.replace("−", "-").replace("–", " - "))
    found = []
    for m in NUMBER.finditer(text):
        if CITATION.search(text[max(0, m.start() - 12):m.start()]):
            continue
        s = m.group().replace(",", "")
        # the unit after it, also across a range or an interval: "6.4 - 12.9 points", "[1.2, 17.5] points"
        unit = re.match(r"(?:\s*[-,]\s*-?[\d.,]+)*\]?\s*(%|point|pp|min\b)?", text[m.end():]).group(1) or ""
        found.append((m.group(), len(s.split(".")[1]) if "." in s else 0, unit))
    return found


def corpus_values(results_root: Path) -> dict[str, set[float]]:
    """Every number printed in a committed report, rule, benchmark output or GPU report under results/
    (key ""), and apart those printed as minutes (key "min")."""
    values: dict[str, set[float]] = {"": set(), "min": set()}
    files = [p for p in Path(results_root).rglob("*") if p.suffix in (".md", ".txt") and p.is_file()]
    for p in files:
        for m in re.finditer(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(\s*min\b)?", p.read_text().replace("−", "-")):
            try:
                x = float(m.group().removesuffix(m.group(1) or "").replace(",", ""))
            except ValueError:
                continue
            values[""].add(x)
            if m.group(1):
                values["min"].add(x)
    return values


def matches(printed: str, decimals: int, unit: str, values: dict[str, set[float]]) -> bool:
    """Whether a report prints `printed` (to its decimals): as is, or a percentage or points as a fraction
    (97.46% for 0.9746); a duration in minutes only where a report prints minutes."""
    x = float(printed.replace(",", ""))
    scale = {"%": 0.01, "point": 0.01, "pp": 0.01}.get(unit)
    tol = 0.5 * 10 ** -decimals * (1 + 1e-9)
    pool = values["min"] if unit == "min" else values[""]
    return any(abs(v - x) <= tol or (scale and abs(v - x * scale) <= tol * scale) for v in pool)


def verify_readme(root: Path, results_root: Path) -> list[str]:
    """One line per README result number that no committed report prints."""
    values = corpus_values(results_root)
    problems = []
    for where, text in results_text(root):
        for printed, decimals, unit in numbers(text):
            if not matches(printed, decimals, unit, values):
                problems.append(f"{where}: {printed} appears in no committed report under {results_root}")
    return problems
