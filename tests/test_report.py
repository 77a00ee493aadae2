"""Verdict logic with known answers, each figure's statistics on synthetic curves, run selection by
identity, and `verify` on committed-style report data."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import yaml

from repro.report import Long, fig1, fig2, read_long, write_long
from repro.report.pipeline import build, verify
from repro.report.stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    leave_one_out,
    mcnemar_exact,
    paired_bootstrap,
    plateau_gain,
    stability,
    steps_to_reach,
    summarize,
    t975,
    value_at,
    verdict,
)
from repro.runs import rundir
from repro.runs.records import read_run, recipe_config, select_runs
from repro.train import run
from tests.conftest import ROOT

FIG1_CLAIMS = ROOT / "results" / "fig1" / "claims.yaml"

# ----------------------------------------------------------------------------------------------
# stats.py


def test_steps_to_reach_interpolates_and_handles_the_edges():
    steps, acc = np.array([100.0, 200.0, 300.0]), np.array([0.5, 0.7, 0.9])
    assert steps_to_reach(steps, acc, 0.8) == pytest.approx(250.0)
    assert steps_to_reach(steps, acc, 0.4) == 100.0  # already there at the first evaluation: that step
    assert steps_to_reach(steps, acc, 0.95) == math.inf  # never reached
    assert steps_to_reach(steps, acc, 0.9) == 300.0


def test_value_at_is_nan_outside_the_recorded_steps():
    steps, acc = np.array([0.0, 100.0]), np.array([0.1, 0.3])
    assert value_at(steps, acc, 50) == pytest.approx(0.2) and math.isnan(value_at(steps, acc, 101))


def test_summary_uses_the_sample_std_and_a_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == pytest.approx(1.0)  # ddof=1 (ddof=0 would give 0.816)
    assert (s.lo, s.hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))
    one = summarize([0.7])
    assert math.isnan(one.std) and math.isnan(one.lo)


@pytest.mark.parametrize("values, op, threshold, expected", [
    ([3.5, 3.6, 3.7], ">=", 3.0, REPRODUCED),  # 3.6 ± 0.25
    ([2.1, 2.2, 2.3], ">=", 3.0, NOT_REPRODUCED),
    ([0.527, 0.524, 0.451], ">=", 0.5, INCONCLUSIVE),  # the mean misses 0.5, but the interval straddles it
    ([0.101, 0.103, 0.102], "<=", 0.15, REPRODUCED),
    ([math.inf, math.inf, 2.0], ">", 1.0, REPRODUCED),  # no t-interval: every seed on the claim's side
    ([math.inf, 0.5, 2.0], ">", 1.0, INCONCLUSIVE),
    ([0.9], ">", 0.0, INCONCLUSIVE),  # one value: no interval
])
def test_verdicts(values, op, threshold, expected):
    assert verdict(summarize(values), op, threshold) == expected


@pytest.mark.parametrize("values, op, threshold, expected", [
    ([math.inf, math.inf, math.inf], "<", 1.0, NOT_REPRODUCED),  # infinite, all on the wrong side
    ([-math.inf, -math.inf], ">", 0.0, NOT_REPRODUCED),
    ([math.inf, 2.0], ">=", 2.0, REPRODUCED),  # a value exactly at a >= threshold is on its side
    ([math.inf, 2.0], ">", 2.0, INCONCLUSIVE),  # ... and not on a > threshold's
    ([2.0, 2.0, 2.0], ">=", 2.0, REPRODUCED),  # zero spread: the interval is the point 2.0
    ([2.0, 2.0, 2.0], ">", 2.0, NOT_REPRODUCED),
    ([2.0, 2.0, 2.0], "<=", 2.0, REPRODUCED),
    ([2.0, 2.0, 2.0], "<", 2.0, NOT_REPRODUCED),
])
def test_verdict_edge_cases(values, op, threshold, expected):
    assert verdict(summarize(values), op, threshold) == expected


def test_t_quantiles_are_scipy_s():
    import scipy.stats

    assert t975(2) == pytest.approx(4.302653, abs=1e-6)
    assert t975(31) == pytest.approx(scipy.stats.t.ppf(0.975, 31)) and t975(31) > 1.959964 * 1.03  # not the normal's
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s.hi - s.mean == pytest.approx(scipy.stats.t.ppf(0.975, 3) * s.std / 2)


def test_stability_counts_leave_one_seed_out_verdicts():
    # Figure 1's bn_ahead_10k at 3 seeds: reproduced, but inconclusive without seed 1
    values = [0.0031, 0.0036, 0.0029]
    assert leave_one_out(values, ">", 0.0) == [INCONCLUSIVE, REPRODUCED, REPRODUCED]
    assert stability(values, [1, 2, 3], ">", 0.0) == "**2 of 3**: without seed 1: inconclusive"
    assert stability([3.5, 3.6, 3.7, 3.6], [1, 2, 3, 4], ">=", 3.0) == "4 of 4"
    assert stability([0.7], [1], ">", 0.0) == "— (one value)"


def test_paired_statistics_on_known_answers():
    import numpy as np

    a = np.array([1, 1, 1, 0, 0, 0, 1, 0] * 50, bool)  # wrong in 200 of 400
    b = np.array([1, 0, 0, 0, 0, 1, 1, 0] * 50, bool)  # wrong in 150
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == (100, 50) and p == pytest.approx(2 * scipy_binom_tail(50, 150))
    s = paired_bootstrap(100.0 * (a.astype(float) - b), reps=4000, seed=0)
    d = 100.0 * (a.astype(float) - b)
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert s.mean == pytest.approx(12.5) and s.lo == pytest.approx(12.5 - 1.96 * se, abs=0.6)
    assert s.hi == pytest.approx(12.5 + 1.96 * se, abs=0.6)
    assert paired_bootstrap(np.zeros((3, 50))).lo == paired_bootstrap(np.zeros((3, 50))).hi == 0.0
    again = paired_bootstrap(100.0 * (a.astype(float) - b), reps=4000, seed=0)
    assert (again.lo, again.hi) == (s.lo, s.hi)  # fixed seed: verify rebuilds it exactly


def scipy_binom_tail(k: int, n: int) -> float:
    import scipy.stats

    return float(scipy.stats.binom.cdf(k, n, 0.5))


def test_a_failed_precondition_makes_a_claim_not_testable():
    assert verdict(summarize([5.0, 6.0, 7.0]), ">=", 3.0, testable=False) == NOT_TESTABLE


def test_plateau_gain():
    assert plateau_gain(np.array([0.1, 0.5, 0.6, 0.6, 0.6]), 2) == pytest.approx(0.0)
    assert plateau_gain(np.array([0.1, 0.5, 0.6, 0.7, 0.8]), 2) == pytest.approx(0.2)
    assert plateau_gain(np.array([0.5, 0.6]), 2) == math.inf  # too short to tell


# ----------------------------------------------------------------------------------------------
# Each figure's statistics on synthetic curves


def _fig2_meta_and_long(curves: dict[str, dict[int, list[float]]]) -> tuple[dict, Long]:
    rows, runs = [], []
    for v, seeds in curves.items():
        for seed, acc in seeds.items():
            name = f"{v}-s{seed}"
            runs.append({"run": name, "experiment": v, "seed": seed})
            rows += [(name, seed, 100 * i, "test_acc", a) for i, a in enumerate([0.1, *acc])]
    return {"runs": runs}, Long(rows)


def test_fig2_statistics_per_seed_on_synthetic_curves():
    flat = [0.3] * 8
    curves = {v: {1: flat, 2: flat} for v in fig2.VARIANTS}
    curves["inception"] = {1: [0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6, 0.6], 2: [0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5]}
    curves["bn_x5"] = {1: [0.5, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], 2: [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]}
    curves["bn_x5_sigmoid"][3] = [0.4] * 8  # a seed Inception lacks: counts for max_acc, not for speed-ups
    meta, long = _fig2_meta_and_long(curves)
    st = fig2.seed_stats(fig2.seed_curves(long, meta))
    assert fig2.measure({"statistic": "max_acc", "variant": "bn_x5_sigmoid"}, st) == ([1, 2, 3], [0.3, 0.3, 0.4])
    assert fig2.measure({"statistic": "speedup", "variant": "bn_x5_sigmoid"}, st)[0] == [1, 2]
    # seed 1: Inception first reaches its max 0.6 at step 500; BN-x5 at 150 (interpolated): 3.33x
    # seed 2: max 0.5 at step 400; BN-x5 already above it at its first evaluation (step 100): 4x
    seeds, speed = fig2.measure({"statistic": "speedup", "variant": "bn_x5"}, st)
    assert seeds == [1, 2] and speed == pytest.approx([500 / 150, 4.0])
    _, never = fig2.measure({"statistic": "speedup", "variant": "bn_baseline"}, st)
    assert never == [0.0, 0.0]  # never reaches Inception's max
    _, ratio = fig2.measure({"statistic": "speedup_ratio", "variant": "bn_x5", "other": "bn_baseline"}, st)
    assert ratio == [math.inf, math.inf]
    _, margin = fig2.measure({"statistic": "max_margin", "variant": "bn_x30"}, st)
    assert margin == pytest.approx([0.3 - 0.7, 0.3 - 0.6])
    ledger = {"preconditions": {"p": {"test": "plateau", "variants": ["inception"], "k": 3, "x": 0.005}}}
    assert fig2.check_preconditions(ledger, fig2.seed_curves(long, meta))["p"]["holds"]
    ledger["preconditions"]["p"]["k"] = 5  # seed 1 still gained 0.1 within the last 5 evaluations
    assert not fig2.check_preconditions(ledger, fig2.seed_curves(long, meta))["p"]["holds"]


def test_fig1_statistics_per_seed_on_synthetic_curves():
    steps = [0, 500, 1000, 5000]
    rows = []
    for seed, base_acc, bn_acc in [(1, [0.1, 0.8, 0.9, 0.92], [0.1, 0.9, 0.93, 0.95]), (2, [0.1, 0.6, 0.8, 0.9], [0.1, 0.9, 0.9, 0.9])]:
        for exp, acc, p50, half in [("b", base_acc, [0.0, 2.0, 1.0, 3.0], [1.0, 2.0, 1.0, 1.0]),
                                    ("n", bn_acc, [0.0, 0.5, 0.5, 1.0], [1.0, 1.25, 1.0, 1.0])]:
            rows += [(f"{exp}{seed}", seed, s, "test_acc", a) for s, a in zip(steps, acc)]
            rows += [(f"{exp}{seed}", seed, s, f"probe_{q}/0", p + d * h) for s, p, h in zip(steps, p50, half)
                     for q, d in (("p15", -1.0), ("p50", 0.0), ("p85", 1.0))]
    long = Long(rows)
    pairs = [(1, "b1", "n1"), (2, "b2", "n2")]
    assert fig1.measure({"statistic": "acc_gap_at", "step": 5000}, long, pairs, 0) == pytest.approx([0.03, 0.0])
    # steps to 0.9: baseline 1000 and 5000, BN 500 and 500
    assert fig1.measure({"statistic": "steps_ratio", "target": 0.9}, long, pairs, 0) == pytest.approx([2.0, 10.0])
    assert fig1.measure({"statistic": "median_drift_ratio"}, long, pairs, 0) == pytest.approx([1 / 3, 1 / 3])
    # From the first evaluation (step 500) on, the jump from step 0 no longer counts: medians 2, 1, 3 vs 0.5, 0.5, 1.
    assert fig1.measure({"statistic": "median_drift_ratio"}, long, pairs, 500) == pytest.approx([0.25, 0.25])
    # spread p85 - p15: baseline 2, 4, 2, 2 (change 2); BN 2, 2.5, 2, 2 (change 0.5)
    assert fig1.measure({"statistic": "spread_change_ratio"}, long, pairs, 0) == pytest.approx([0.25, 0.25])


# ----------------------------------------------------------------------------------------------
# Run identity and selection; verify


@pytest.fixture(scope="module")
def fig1_runs(tmp_path_factory):
    """Smoke-scale Figure 1 runs, both nets, seeds 1 and 2 (a few seconds each)."""
    from tests.conftest import compose_config

    runs_dir = tmp_path_factory.mktemp("fig1") / "runs"
    for exp in ("fig1_baseline", "fig1_bn"):
        for seed in (1, 2):
            run(compose_config([f"experiment={exp}", "scale=smoke", f"seed={seed}", f"runs_dir={runs_dir}"]))
    return runs_dir


def test_identity_from_config_yaml_matches_the_recipe(fig1_runs):
    r = read_run(next(fig1_runs.glob("fig1_bn-smoke-s2-*")))
    assert r.identity == rundir.identity_hash(recipe_config("fig1_bn", "smoke")) == r.env["identity"]
    assert r.identity == rundir.identity_hash(recipe_config("fig1_bn", "smoke", ("seed=7", "runs_dir=elsewhere")))


def _claims_table(out) -> str:
    text = (out / "report.md").read_text()
    return text[text.index("## Claims"):text.index("## Test accuracy")]


def test_report_refuses_a_mismatched_newer_run(fig1_runs, tmp_path):
    clean = build("fig1", fig1_runs, "smoke", tmp_path / "a", FIG1_CLAIMS)
    mixed_dir = tmp_path / "mixed"
    shutil.copytree(fig1_runs, mixed_dir)
    from tests.conftest import compose_config

    run(compose_config(["experiment=fig1_bn", "scale=smoke", "seed=1", "train.steps=100", f"runs_dir={mixed_dir}"]))
    unfinished = next(mixed_dir.glob("fig1_baseline-smoke-s2-*"))
    shutil.copytree(unfinished, unfinished.with_name(unfinished.name + ".2"))
    (unfinished.with_name(unfinished.name + ".2") / "summary.json").unlink()
    mixed = build("fig1", mixed_dir, "smoke", tmp_path / "b", FIG1_CLAIMS)
    assert _claims_table(mixed) == _claims_table(clean)  # the same numbers as without the stray runs
    excluded = json.loads((mixed / "meta.json").read_text())["excluded"]
    assert len(excluded) == 2
    assert any("fig1_bn-smoke-s1-" in x and "train.steps=100 (recipe: 300)" in x for x in excluded)
    assert any(".2: unfinished (last recorded step 300)" in x for x in excluded)
    assert "- excluded: fig1_bn-smoke-s1-" in (mixed / "report.md").read_text()


def test_missing_seed_is_said(fig1_runs, tmp_path):
    runs_dir = tmp_path / "runs"
    shutil.copytree(fig1_runs, runs_dir)
    shutil.rmtree(next(runs_dir.glob("fig1_bn-smoke-s2-*")))
    sel = select_runs(runs_dir, ["fig1_baseline", "fig1_bn"], "smoke")
    assert sel.missing == {"fig1_bn": [2]} and [r.seed for r in sel.runs["fig1_bn"]] == [1]


def test_a_one_seed_figure_takes_only_its_seeds(fig1_runs):
    """Figure 4 is made from seed 1: another figure's seed-2 runs of the same experiment are neither
    used nor reported missing for the others."""
    sel = select_runs(fig1_runs, ["fig1_baseline", "fig1_bn"], "smoke", seeds=(1,))
    assert sel.missing == {} and [r.seed for rs in sel.runs.values() for r in rs] == [1, 1]
    assert select_runs(fig1_runs, ["fig1_bn"], "smoke", seeds=(1, 3)).missing == {"fig1_bn": [3]}


def test_verify_rebuilds_and_names_a_changed_number(fig1_runs, tmp_path):
    results = tmp_path / "results"
    out = build("fig1", fig1_runs, "smoke", results, FIG1_CLAIMS)
    assert verify(results) == []
    long = read_long(out / "runs.csv")
    bn1 = next(r for r in {x[0] for x in long.rows} if r.startswith("fig1_bn-smoke-s1-"))
    rows = [(r, s, t, m, v + 10.0 if (r, m, t) == (bn1, "probe_p50/0", 100) else v) for r, s, t, m, v in long.rows]
    write_long(out / "runs.csv", rows)
    problems = verify(results)
    assert problems and all(str(out / "report.md") in p for p in problems)
    assert any("median_drifts_less" in p for p in problems)  # named by its row


def test_report_logs_its_claims_and_figures_to_an_offline_wandb_run(fig1_runs, tmp_path, capsys):
    from repro.report.__main__ import main
    from tests.wandb_files import OfflineRun

    runs_dir, out = tmp_path / "runs", tmp_path / "results"
    shutil.copytree(fig1_runs, runs_dir)
    args = ["fig1", "--scale", "smoke", "--runs-dir", str(runs_dir), "--out", str(out), "--claims", str(FIG1_CLAIMS)]
    assert main(args) == 0 and not (runs_dir / "wandb").exists()  # as its runs: smoke runs do not log to wandb
    assert main([*args, "--wandb", "offline"]) == 0
    (folder,) = (runs_dir / "wandb" / "wandb").glob("offline-run-*")
    assert f"logged the report to wandb: {folder}" in capsys.readouterr().out
    report = OfflineRun(folder)
    assert report.run.job_type == "report" and report.run.run_group == "fig1-smoke"
    assert sorted(report.tags) == ["figure:fig1", "report", "scale:smoke"]
    (row,) = report.history
    claims = json.loads(report.file(row["claims/path"]).read_text())
    md = _claims_table(out / "fig1" / "smoke")
    assert claims["columns"] == ["claim", "paper", "ours, per seed", "mean ± std", "95% interval", "criterion", "verdict",
                                 "stable without one seed"]
    assert [r[0] for r in claims["data"]] == [c["id"] for c in yaml.safe_load(FIG1_CLAIMS.read_text())["claims"]]
    assert all(f"| {' | '.join(r)} |" in md for r in claims["data"])  # the rows as the report prints them
    assert {report.summary[f"verdict/{r[0]}"] for r in claims["data"]} <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE}
    assert json.loads(report.file(row["paper/claims/path"]).read_text())["data"][0][:2] == \
        ["bn_ahead_5k", yaml.safe_load(FIG1_CLAIMS.read_text())["claims"][0]["paper"]]
    for figure in ("fig1a", "fig1bc"):  # each figure as a wandb.Image
        assert row[f"figures/{figure}/_type"] == "image-file"
        assert report.file(row[f"figures/{figure}/path"]).read_bytes()[:4] == b"\x89PNG"


def test_committed_recipe_identities_hold():
    """Keys that joined the schema later (rundir.LATER_KEYS) leave every committed run's identity as it
    was: Figure 1's recipes hash as their committed reports recorded; the Inception recipes do so with
    the pools those runs had (`model.pools=symmetric`, before issue 20), and differ with today's; Figure 4's,
    retrained for issue 22, hash with today's pools."""
    symmetric = ("model.pools=symmetric",)
    for name, before in (("fig1/cpu", ()), ("fig2/cpu", symmetric), ("fig2_plateau/cpu_long", symmetric), ("fig4/cpu", ())):
        meta = json.loads((ROOT / "results" / name / "meta.json").read_text())
        assert meta["recipe_identity"], name
        for experiment, committed in meta["recipe_identity"].items():
            assert rundir.identity_hash(recipe_config(experiment, meta["scale"], before)) == committed, (name, experiment)
            if before:
                assert rundir.identity_hash(recipe_config(experiment, meta["scale"])) != committed
    old = {"experiment": "inception", "model": {"name": "inception_paper"}, "train": {"steps": 1}}  # no pools key
    assert rundir.recorded_config(old)["model"]["pools"] == "symmetric" and "pools" not in old["model"]


def _report_folder(folder, rows, verdicts):
    folder.mkdir(parents=True)
    write_long(folder / "runs.csv", rows)
    table = ["| claim | paper | ours, per seed | verdict | stable without one seed |", "|---|---|---|---|---|"]
    table += [f"| {c} | the paper | 1: 0.1 | {v} | {s} |" for c, (v, s) in verdicts.items()]
    (folder / "report.md").write_text("# A report\n\n## Claims\n" + "\n".join(table) + "\n\n## More\n")


def test_compare_says_where_two_reports_agree_and_where_a_verdict_differs(tmp_path, capsys):
    from repro.report.__main__ import main
    from repro.report.compare import compare

    rows = [(f"fig1_bn-cpu-s{s}-0123abcd", s, step, "test_acc", 0.9 + s / 100 + step / 1e6) for s in (1, 2) for step in (0, 100)]
    verdicts = {"ahead": ("reproduced", "2 of 2"), "faster": ("inconclusive", "**1 of 2**: without seed 1: reproduced")}
    _report_folder(tmp_path / "a", rows, verdicts)
    other = [(name.replace("0123abcd", "fedc4321"), *rest) for name, *rest in rows]  # another identity's hash
    _report_folder(tmp_path / "b", other, verdicts)
    lines, agree = compare(tmp_path / "a", tmp_path / "b")
    assert agree and "4 values in both (0 only in the first, 0 only in the second); 4 identical" in lines[1]
    assert lines[2] == "claims: 2 in both; every cell identical in 2, every verdict agrees"
    other[3] = (*other[3][:4], other[3][4] + 0.25)
    _report_folder(tmp_path / "c", other, {**verdicts, "faster": ("**reproduced**", "2 of 2")})
    lines, agree = compare(tmp_path / "a", tmp_path / "c")
    assert not agree and "3 identical; largest difference 0.25 (fig1_bn-cpu-s2, step 100, test_acc)" in lines[1]
    assert lines[-1] == "- faster: verdict inconclusive here, reproduced there (within the stated stability: one report marks it fragile)"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert main(["compare", str(tmp_path / "a")]) == 2 and "compare takes two report folders" in capsys.readouterr().err
