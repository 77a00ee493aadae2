"""Figure 4's paired statistics (issue 22): every compared pair of predictions is on the same test images,
so each claim is judged on per-image differences, never on two error rates as if independent.

- multi-crop vs one crop, ensemble vs the best single network: d_i = wrong_a(i) − wrong_b(i) per image
  (points); a 95% paired-bootstrap interval over images (and over seeds, where a row has several), and the
  exact McNemar test of the discordant images beside it.
- population statistics vs moving averages: per network, the same per-image difference; the statistic is
  the mean over networks of |mean over images|, bootstrapped over networks and images together.

The per-image records are `wrong` bit strings (1 = top-1 wrong) in evaluations.json, written by
`fig4.run_evaluations` from `repro.evaluate`'s per-image predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from repro.report.stats import mcnemar_exact, paired_bootstrap, stability_text, verdict

ABS_MEAN = lambda m: np.abs(m).mean(-1)  # noqa: E731  (mean over networks of |mean difference|)


def wrong_bits(predictions: list[int], labels: list[int]) -> str:
    """'1' where the top-1 prediction misses the label, '0' where it hits, one character per test image."""
    return "".join("1" if p != y else "0" for p, y in zip(predictions, labels, strict=True))


def per_image(data_dir: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """evaluation -> {"combined" or a run's name: bool array, True where wrong}; None when the committed
    evaluations predate per-image records."""
    path = Path(data_dir) / "evaluations.json"
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    if not all("wrong" in v["result"] for v in res.values()):
        return None
    return {name: {k: np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1") for k, bits in v["result"]["wrong"].items()}
            for name, v in res.items()}


def evaluation_seconds(data_dir: Path) -> float | None:
    """The evaluations' summed wall time (s), from the committed evaluations.json; None without it."""
    path = Path(data_dir) / "evaluations.json"
    return sum(v["result"]["wall_s"] for v in json.loads(path.read_text()).values()) if path.exists() else None


def error_drop(wrong: dict, a: str, b: str, boot: dict) -> tuple[list[str], object, str]:
    """Error of `a` minus error of `b` in points, paired over the same images: (labels, summary, McNemar text)."""
    wa, wb = wrong[a]["combined"], wrong[b]["combined"]
    only_a, only_b, p = mcnemar_exact(wa, wb)
    s = paired_bootstrap(100.0 * (wa.astype(float) - wb), reps=boot["reps"], seed=boot["seed"])
    return (["seed 1"], s,
            f"exact McNemar: {only_a:,} images wrong only in {a}, {only_b:,} only in {b}, two-sided p = {p:.3g}")


def pop_ema_gap(wrong: dict, members: dict[str, str], single: str, boot: dict,
                claim: dict) -> tuple[list[str], object, str, str]:
    """Mean over networks of |population error − EMA error| (points), bootstrapped over networks and images."""
    names = sorted(members, key=lambda r: members[r])
    d = np.stack([100.0 * (wrong["all_1crop_population"][r].astype(float)
                           - wrong["single_1crop" if members[r] == single else "ensemble_1crop"][r]) for r in names])
    s = paired_bootstrap(d, statistic=ABS_MEAN, reps=boot["reps"], seed=boot["seed"])
    tests = [mcnemar_exact(wrong["all_1crop_population"][r], wrong["single_1crop" if members[r] == single else "ensemble_1crop"][r])
             for r in names]
    op, threshold = claim["op"], float(claim["threshold"])
    loo = [verdict(paired_bootstrap(np.delete(d, i, 0), statistic=ABS_MEAN, reps=boot["reps"], seed=boot["seed"]),
                   op, threshold) for i in range(len(names))]
    labels = [members[r] for r in names]
    return (labels, s, "exact McNemar per network, p = " + ", ".join(f"{members[r]} {p:.2g}" for r, (_, _, p) in zip(names, tests)),
            stability_text(verdict(s, op, threshold), loo, labels))
