"""The map report on a known-answer map: its counts, marks, verdicts and stability from synthetic curves
whose steps to the target are set by hand."""

from __future__ import annotations

import math

import pytest

from repro.report import Long, fig1_map, read_md_table

LEDGER = {"grid": {"lr": [0.1, 1.0, 10.0], "init_std": [0.1], "seeds": [1, 2, 3], "steps": 1000, "eval_every": 100},
          "target": 0.8, "checkpoints": [500, 1000], "never_learns_below": 0.2,
          "claims": [{"id": "faster", "paper": "p", "statistic": "steps_gap_to_target", "op": ">", "threshold": 0.0},
                     {"id": "ahead", "paper": "p", "statistic": "acc_gap_at", "step": 1000, "op": ">", "threshold": 0.0}]}


def _curve(reach: float | None, top: float = 0.9) -> list[tuple[int, float]]:
    """Accuracy every 100 steps: 0.1 until it climbs linearly to `top`, crossing 0.8 at step `reach`
    (None: it never passes `top`, a value below 0.8)."""
    if reach is None:
        return [(s, min(top, 0.1 + s / 10000)) for s in range(0, 1001, 100)]
    return [(s, 0.1 if s < reach - 100 else min(0.95, 0.7 + (s - reach + 100) * 0.001)) for s in range(0, 1001, 100)]


# lr -> net -> per seed: the step where 0.8 is reached (None: never) and the best accuracy
CELLS = {
    0.1: {"fig1_baseline": [(300, None), (400, None), (500, None)], "fig1_bn": [(100, None), (200, None), (200, None)]},
    1.0: {"fig1_baseline": [(None, 0.15), (None, 0.15), (None, 0.15)], "fig1_bn": [(200, None), (300, None), (300, None)]},
    10.0: {"fig1_baseline": [(None, 0.12), (None, 0.12), (None, 0.5)], "fig1_bn": [(None, 0.6), (None, 0.6), (None, 0.6)]},
}


def _map():
    rows, runs, cells, best = [], [], {}, {}
    for lr, nets in CELLS.items():
        for exp, seeds in nets.items():
            for seed, (reach, top) in enumerate(seeds, 1):
                name = f"{exp}-lr{lr}-s{seed}"
                curve = _curve(reach) if reach is not None else _curve(None, top)
                rows += [(name, seed, s, "test_acc", a) for s, a in curve]
                runs.append({"run": name, "experiment": exp, "seed": seed, "status": "complete", "diverged_at": None})
                cells[name], best[name] = [lr, 0.1], max(a for _, a in curve)
    meta = {"runs": runs, "cells": cells, "best_acc": best, "steps": 1000, "missing_seeds": {}, "excluded": [],
            "runs_dir": "runs", "claims": "claims.yaml", "ledger": {"ledger_commit": "abc"},
            "data": {"dataset": "mnist", "source": "synthetic", "n_train": 60000, "n_test": 10000, "binarized": True},
            "env": {"device": "cpu", "device_name": "", "torch": "x"}}
    return Long(rows), meta


def test_known_answer_map(tmp_path):
    long, meta = _map()
    table = fig1_map.cell_table(long, meta, {**LEDGER, "grid": dict(LEDGER["grid"])})
    assert table[(0.1, 0.1)]["reach"]["fig1_baseline"] == pytest.approx([300.0, 400.0, 500.0])
    assert table[(1.0, 0.1)]["marks"] == {"fig1_baseline": "never learns"}  # best 0.15 < 0.2 in every seed
    assert table[(10.0, 0.1)]["marks"] == {"fig1_baseline": "never learns in 2 of 3 seeds"}  # not the ledger's mark
    assert table[(10.0, 0.1)]["steps_gap_to_target"] is None  # neither reaches 0.8
    verdict, loo = fig1_map.steps_verdicts(table[(0.1, 0.1)])
    # gaps 200, 200, 300: [90, 377] above 0; without seed 3 ([200, 200]) still, without 1 or 2 not
    assert verdict == "reproduced" and loo == ["inconclusive", "inconclusive", "reproduced"]
    assert math.isinf(table[(1.0, 0.1)]["steps_gap_to_target"].mean)

    text = fig1_map.render(long, meta, {**LEDGER, "grid": dict(LEDGER["grid"])}, tmp_path)
    assert "**BN reaches 80% in fewer steps in 2 of 2 settings**" in text
    assert "1 settings where neither net reaches 80% in any seed are not counted; 1 of the 2 flip" in text
    _, across = read_md_table(text, "claim")
    assert across[0][2:6] == ["2 of 2", "0 of 2", "0 of 2", "1 of 2 (0.1 / 0.1)"]
    _, cells = read_md_table(text, "lr")
    by_lr = {row[0]: row for row in cells}
    assert by_lr["0.1"][5:7] == ["reproduced", "**1 of 3**: without seed 1: inconclusive; without seed 2: inconclusive"]
    assert by_lr["1.0"][5:7] == ["reproduced", "3 of 3"] and by_lr["1.0"][-1] == "baseline never learns"
    assert by_lr["10.0"][5] == "—" and by_lr["10.0"][-1] == "baseline never learns in 2 of 3 seeds"
    assert (tmp_path / "map.png").stat().st_size > 0


def test_map_cells_where_one_net_reaches_have_their_own_mark():
    long, meta = _map()
    table = fig1_map.cell_table(long, meta, {**LEDGER, "grid": dict(LEDGER["grid"])})
    assert fig1_map.cell_text("steps_gap_to_target", table[(1.0, 0.1)], 0.8) == ("seeds reaching 80%:\nBN 3/3, base 0/3", "one")
    assert fig1_map.cell_text("steps_gap_to_target", table[(10.0, 0.1)], 0.8)[1] == "none"
    assert fig1_map.cell_text("steps_gap_to_target", table[(0.1, 0.1)], 0.8)[1] == "value"
