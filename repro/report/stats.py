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

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE = (
    "reproduced", "**not reproduced**", "inconclusive", "not testable at this scale")

# Two-sided 95% Student-t quantiles t(0.975, df), df = 1..30 (standard tables); above 30 the
# normal 1.96 is within 2% of the exact value.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964


def t975(df: int) -> float:
    return T975[df - 1] if df <= len(T975) else Z975


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


METHOD_NOTE = ("Each statistic is computed per seed (paired by seed where it compares two networks), then "
               "summarised by its mean, sample std (ddof=1) and 95% t-interval mean ± t(0.975, n−1)·std/√n. "
               "Verdict: **reproduced** if the interval lies entirely on the claim's side of the threshold, "
               "**not reproduced** if entirely on the other side, **inconclusive** if it straddles it, "
               "**not testable at this scale** if a precondition of the ledger fails. Where a seed's value is "
               "infinite (a target never reached) there is no t-interval: the verdict is reproduced or not "
               "reproduced only if every seed lies on that side, otherwise inconclusive.")
