"""Figure 2's plateau check (issue 9): the look-back plateau step with known answers, and the report
on synthetic curves: the ledger's precondition at the long run's end and the cost of six variants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from repro.report import Long, fig2, fig2_plateau
from repro.report.stats import plateau_step

LEDGER = {"preconditions": {"inception_plateaued": {"test": "plateau", "variants": ["inception"], "k": 3, "x": 0.005}}}


def test_plateau_step():
    s = np.array([100, 200, 300, 400, 500])
    assert plateau_step(s, np.array([0.5, 0.6, 0.7, 0.7, 0.702]), 0.005) == 300  # +0.2 points later: within 0.5
    assert math.isinf(plateau_step(s, np.array([0.5, 0.6, 0.7, 0.7, 0.71]), 0.005))  # still gaining at the end
    assert plateau_step(s, np.array([0.8, 0.7, 0.6, 0.6, 0.6]), 0.005) == 100  # the first evaluation was the best
    assert plateau_step(s, np.array([0.5, 0.7, 0.6, 0.69, 0.7]), 0.005) == 200  # a dip and a return is no gain


def _meta(long_acc: list[float], steps: int = 800) -> tuple[dict, Long]:
    every = steps // len(long_acc)
    rows = [("inception-long", 1, every * i, "test_acc", a) for i, a in enumerate([0.1, *long_acc])]
    rows += [(f"inception-cpu{r}", 1, 50 * i, "test_acc", a) for r in ("", "-s2")
             for i, a in enumerate([0.1, 0.3, 0.4, 0.5, 0.6])]
    ref_runs = [{"run": f"{v}-cpu", "experiment": v, "seed": 1, "wall_s": 600.0} for v in fig2.VARIANTS]
    ref_runs.append({"run": "inception-cpu-s2", "experiment": "inception", "seed": 2, "wall_s": 1200.0})
    meta = {"scale": "cpu_long", "runs_dir": "runs", "claims": "results/fig2/claims.yaml",
            "config": {"train": {"steps": steps, "batch_size": 32, "eval_every": every},
                       "optim": {"momentum": 0.9, "lr": 0.0015, "decay_rate": 0.94, "decay_steps": steps // 30},
                       "model": {"name": "bn_inception", "width": 0.25, "small_input": True}},
            "data": {"dataset": "fashion_mnist", "source": "test", "n_train": 60000, "n_test": 5000},
            "env": {"device": "cpu", "torch": "2", "cpu_threads": 1},
            "reference": {"dir": "results/fig2/cpu", "steps": 200, "eval_every": 50, "runs": ref_runs},
            "runs": [{"run": "inception-long", "experiment": "inception", "seed": 1, "wall_s": 3000.0,
                      "status": "complete", "diverged_at": None, "provenance": "after the ledger, clean tree"}],
            "ledger": {"ledger_commit": "abc", "ledger_date": "d", "ledger_edited": False},
            "recipe_identity": {"inception": "h"}, "missing_seeds": {}, "excluded": []}
    return meta, Long(rows)


def test_report_says_plateaued_and_the_cost(tmp_path):
    meta, long = _meta([0.5, 0.6, 0.7, 0.72, 0.723, 0.722, 0.721, 0.72])
    text = fig2_plateau.render(long, meta, LEDGER, tmp_path)
    assert "**has plateaued**" in text and ": -0.10 points" in text  # best of the last 3 (72.2) - best before (72.3)
    # six variants, 600 s each at 200 steps (the least contended of inception's 600 and 1,200) x4, two at a time
    hours = 6 * 600 * 4 / 2 / 3600
    assert f"about **{hours:.1f} h on 2 cores**" in text and "fits the issue's budget" in text
    assert (tmp_path / "plateau.png").stat().st_size > 10_000


def test_report_says_not_plateaued_when_the_end_still_gains(tmp_path):
    meta, long = _meta([0.5, 0.6, 0.7, 0.72, 0.73, 0.74, 0.75, 0.76], steps=8000)
    text = fig2_plateau.render(long, meta, LEDGER, tmp_path)
    assert "**has not plateaued**" in text and "3.00 points" in text and "not within the run" in text
    assert "does not fit" in text and "make reproduce-fig2 SCALE=cpu_long SEEDS=1" in text
    assert fig2_plateau.cost(meta, 8000)[1] == pytest.approx(6 * 600 * 40 / 2 / 3600)
