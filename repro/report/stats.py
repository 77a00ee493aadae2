"""Statistics behind every verdict: curves read at a step or a target, plateau tests, and a claim's
per-seed values summarised as mean, sample std and a 95% interval.

Verdicts (issue 9): **reproduced** if the interval lies entirely on the claim's side of the ledger's
threshold, **not reproduced** if entirely on the other side, **inconclusive** if it straddles the
threshold, **not testable at this scale** if a precondition of the ledger fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE = (
    "reproduced", "**not reproduced**", "inconclusive", "not testable at this scale")

Z975 = float(scipy.stats.norm.ppf(0.975))  # 1.959964


def t975(df: int) -> float:
    """The two-sided 95% Student-t quantile t(0.975, df), exact at every df (a table that fell back to
    the normal 1.96 beyond 30 degrees of freedom was 3.9% off at 31)."""
    return float(scipy.stats.t.ppf(0.975, df))


# ----------------------------------------------------------------------------------------------
# Reading curves


def steps_to_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float:
    """First step where the curve reaches `target`, linearly interpolated between evaluations; the
    first evaluation itself if it is already there; inf if it never does."""
    above = np.nonzero(np.asarray(values) >= target)[0]
    if len(above) == 0:
        return math.inf
    i = above[0]
    if i == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    return float(s0 + (target - v0) / (v1 - v0) * (s1 - s0))


def value_at(steps: np.ndarray, values: np.ndarray, step: float) -> float:
    """The curve at `step`, interpolated; nan outside the recorded steps."""
    return float(np.interp(step, steps, values)) if len(steps) and steps[0] <= step <= steps[-1] else math.nan


def plateau_gain(values: np.ndarray, k: int) -> float:
    """How much the last `k` evaluations improved the best: max(last k) - max(all before them)."""
    values = np.asarray(values, dtype=float)
    if len(values) <= k:
        return math.inf  # too short to tell: not a plateau
    return float(values[-k:].max() - values[:-k].max())


def tail_mean(steps: np.ndarray, values: np.ndarray, start: float) -> float:
    """The mean of the evaluations at steps >= `start`: Figures 2-3's final accuracy under the issue-20
    protocol, robust to one evaluation's noise where a maximum is biased up by it; nan if there are none."""
    tail = np.asarray(values, dtype=float)[np.asarray(steps) >= start]
    return float(tail.mean()) if len(tail) else math.nan


def plateau_step(steps: np.ndarray, values: np.ndarray, x: float) -> float:
    """The first evaluation step after which the curve never beats its best so far by more than `x`:
    where, looking back, the run had plateaued; inf if no evaluation before the last one qualifies."""
    values = np.asarray(values, dtype=float)
    later_best = np.maximum.accumulate(values[::-1])[::-1]  # best at or after each evaluation
    for i in range(len(values) - 1):
        if later_best[i + 1] - values[: i + 1].max() <= x:
            return float(steps[i])
    return math.inf


def ratio(a: float, b: float) -> float:
    """a / b with x/0 = inf for x > 0 (a network that never reaches a target took infinitely long)."""
    return a / b if b else (math.inf if a else math.nan)


# ----------------------------------------------------------------------------------------------
# Summaries and verdicts


@dataclass
class Summary:
    """A statistic's per-unit values (seeds, or networks) and the 95% interval of their mean."""

    values: list[float]
    mean: float
    std: float  # sample std, ddof=1; nan for one value
    lo: float
    hi: float
    method: str


def summarize(values: list[float]) -> Summary:
    """Mean, sample std (ddof=1) and the 95% t-interval mean ± t(0.975, n-1) std / sqrt(n).

    One value has no interval (lo = hi = nan). Infinite values (a target never reached) have no
    t-interval either; the verdict then needs every value on one side (see `verdict`).
    """
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0 or np.isnan(v).any():
        return Summary(list(values), math.nan, math.nan, math.nan, math.nan, "no value")
    if not np.isfinite(v).all():
        return Summary(list(values), float(v.mean()), math.nan, math.nan, math.nan, "all values on one side")
    mean = float(v.mean())
    if n == 1:
        return Summary(list(values), mean, math.nan, math.nan, math.nan, "one value, no interval")
    std = float(v.std(ddof=1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Summary(list(values), mean, std, mean - half, mean + half, f"t-interval, n={n}")


def normal_interval(estimate: float, se: float, method: str) -> Summary:
    """A 95% normal-approximation interval estimate ± 1.96 se (one value with a known standard error)."""
    half = Z975 * se
    return Summary([estimate], estimate, math.nan, estimate - half, estimate + half, method)


def mcnemar_exact(a_wrong: np.ndarray, b_wrong: np.ndarray) -> tuple[int, int, float]:
    """The exact McNemar test of two classifiers on the same images: (images only `a` gets wrong, images
    only `b` gets wrong, two-sided p-value of the binomial test of those discordant counts at 1/2)."""
    a, b = np.asarray(a_wrong, bool), np.asarray(b_wrong, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = scipy.stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def paired_bootstrap(d: np.ndarray, statistic=None, reps: int = 10000, seed: int = 0) -> Summary:
    """A 95% percentile interval for a statistic of per-image paired differences `d` (units x images: one
    row per seed or network, the same images in every row), resampling images with replacement, the same
    draw for every unit so the pairing is kept, and units with replacement where there are several.

    `statistic` maps the units' mean differences (..., units) to one number per leading index (default:
    their mean). Images with the same row of differences are interchangeable, so a resample of the images
    is a multinomial draw over the distinct rows: exact, and fast at 10,000 images. A fixed `seed` gives
    the same interval on every machine with the same numpy."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    stat = statistic or (lambda m: m.mean(-1))
    units, n = d.shape
    patterns, inverse = np.unique(d.T, axis=0, return_inverse=True)  # (P, units): the distinct image rows
    rng = np.random.default_rng(seed)
    means = rng.multinomial(n, np.bincount(inverse.ravel()) / n, size=reps) @ patterns / n  # (reps, units)
    if units > 1:
        means = np.take_along_axis(means, rng.integers(units, size=(reps, units)), axis=1)
    lo, hi = np.percentile(stat(means), [2.5, 97.5])
    per_unit = d.mean(1)
    return Summary([float(stat(m[None])) for m in per_unit], float(stat(per_unit)),
                   float(np.std([stat(m[None]) for m in per_unit], ddof=1)) if units > 1 else math.nan,
                   float(lo), float(hi), f"paired bootstrap, {units} x {n:,} images, {reps:,} resamples")


def _on_side(x: float, op: str, threshold: float) -> bool:
    return {">": x > threshold, ">=": x >= threshold, "<": x < threshold, "<=": x <= threshold}[op]


def verdict(s: Summary, op: str, threshold: float, testable: bool = True) -> str:
    """One of the four verdict words for the claim `statistic <op> threshold`."""
    if not testable:
        return NOT_TESTABLE
    if s.method == "all values on one side":
        sides = [_on_side(x, op, threshold) for x in s.values]
        return REPRODUCED if all(sides) else NOT_REPRODUCED if not any(sides) else INCONCLUSIVE
    if math.isnan(s.lo):
        return INCONCLUSIVE  # no value, or one value with no interval
    if _on_side(s.lo, op, threshold) and _on_side(s.hi, op, threshold):
        return REPRODUCED
    if not _on_side(s.lo, op, threshold) and not _on_side(s.hi, op, threshold):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def leave_one_out(values: list[float], op: str, threshold: float, testable: bool = True) -> list[str]:
    """The verdict with each value left out in turn (the leave-one-seed-out subsets), in order."""
    return [verdict(summarize(values[:i] + values[i + 1:]), op, threshold, testable) for i in range(len(values))]


def stability_text(full: str | None, loo: list[str | None], labels: list) -> str:
    """How many leave-one-out verdicts equal the full one, naming each that flips: "10 of 10", or
    "**8 of 10**: without seed 3: inconclusive; without seed 7: inconclusive" (None: no verdict)."""
    if len(loo) < 2:
        return "— (one value)"
    flips = [f"without {'seed ' if isinstance(label, int) else ''}{label}: {(v or 'no verdict').strip('*')}"
             for label, v in zip(labels, loo) if v != full]
    same = f"{len(loo) - len(flips)} of {len(loo)}"
    return f"**{same}**: " + "; ".join(flips) if flips else same


def stability(values: list[float], labels: list, op: str, threshold: float, testable: bool = True) -> str:
    """In how many leave-one-seed-out subsets the verdict on `values` stays the same (stability_text)."""
    values = list(values)
    return stability_text(verdict(summarize(values), op, threshold, testable),
                          leave_one_out(values, op, threshold, testable), labels)


METHOD_NOTE = ("Each statistic is computed per seed (paired by seed where it compares two networks), then "
               "summarised by its mean, sample std (ddof=1) and 95% t-interval mean ± t(0.975, n−1)·std/√n. "
               "Verdict: **reproduced** if the interval lies entirely on the claim's side of the threshold, "
               "**not reproduced** if entirely on the other side, **inconclusive** if it straddles it, "
               "**not testable at this scale** if a precondition of the ledger fails. Where a seed's value is "
               "infinite (a target never reached) there is no t-interval: the verdict is reproduced or not "
               "reproduced only if every seed lies on that side, otherwise inconclusive. Stability: in how many of the "
               "subsets that leave one seed (or network) out the verdict stays the same; a verdict that flips "
               "names the left-out seed and the verdict without it (preconditions are judged on every seed).")
