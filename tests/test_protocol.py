"""Figures 2-3's protocol (issue 20): the rate rule and the doubling test on known answers, the ledger's
statistics, and the driver end to end on a tiny ledger (python -m repro.protocol)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from repro.protocol import suite_progress
from repro.report import ledger_for, load_ledger
from repro.report.fig2 import check_preconditions, horizon_note
from repro.report.fig2_rule import choose_length, choose_protocol, choose_rate, rule_order, rule_rates
from repro.report.pipeline import render, verify
from repro.report.stats import tail_mean
from repro.runs.records import recipe_config
from tests.conftest import DATA, ROOT, needs_mnist

LEDGER = load_ledger(ROOT / "results" / "fig2" / "protocol.yaml")


def finals(*values):
    return dict(zip((1, 2, 3), values))


def test_the_ledger_is_the_cpu_tuned_scales():
    assert ledger_for("fig2", "cpu_tuned", ROOT / "results") == ROOT / "results" / "fig2" / "protocol.yaml"
    assert ledger_for("fig2", "cpu", ROOT / "results") == ROOT / "results" / "fig2" / "claims.yaml"


def test_tail_mean_is_the_mean_of_the_evaluations_from_a_step():
    steps, acc = np.array([240, 1680, 1920, 2160, 2400]), np.array([0.3, 0.70, 0.74, 0.71, 0.73])
    assert tail_mean(steps, acc, 0.7 * 2400) == pytest.approx(0.72)
    assert np.isnan(tail_mean(steps[:1], acc[:1], 0.7 * 2400))


def test_rule_picks_the_best_mean_and_the_smaller_of_a_tie():
    table = {0.0015: finals(0.60, 0.61, 0.62), 0.0045: finals(0.70, 0.71, 0.72),
             0.015: finals(0.7005, 0.7105, 0.7205), 0.045: finals(0.65, 0.66, 0.64)}
    assert choose_rate(LEDGER, table) == (0.0045, [])  # 0.015 is better by less than the 0.1-point tie
    table[0.015] = finals(0.72, 0.73, 0.74)
    assert choose_rate(LEDGER, table) == (0.015, [])
    del table[0.045][3]
    assert choose_rate(LEDGER, table) == (None, [0.045])  # a seed still to run


def test_rule_extends_a_winning_end_once():
    table = {r: finals(a, a, a) for r, a in ((0.0015, 0.5), (0.0045, 0.6), (0.015, 0.65), (0.045, 0.7))}
    assert rule_rates(LEDGER, table)[-1] == 0.135 and choose_rate(LEDGER, table) == (None, [0.135])
    table[0.135] = finals(0.1, 0.1, 0.1)  # the extension diverged (counts 0 or chance): the old end wins
    assert choose_rate(LEDGER, table) == (0.045, [])
    table[0.135] = finals(0.8, 0.8, 0.8)  # it wins, and is not extended again
    assert choose_rate(LEDGER, table) == (0.135, [])


UNREVISED = {k: v for k, v in LEDGER.items() if k != "stability"}  # the ledger before its revision 1


def ladder(ledger, at):
    got = choose_length(ledger, lambda n: at.get(n, {}))
    return got.length, got.need, got.rungs


def test_doubling_accepts_the_first_rung_every_seed_passes():
    at = {2400: finals(0.70, 0.71, 0.72), 4800: finals(0.72, 0.73, 0.74), 9600: finals(0.73, 0.735, 0.75)}
    # 2,400 -> 4,800 gains 2 points on every seed (> 1.5): rejected; 4,800 -> 9,600 at most 1.0: accepted
    length, need, rungs = ladder(LEDGER, at)
    assert (length, need, [r["passed"] for r in rungs]) == (4800, [], [False, True])
    assert rungs[0]["gains"][1] == pytest.approx(0.02)
    assert ladder(LEDGER, {n: f for n, f in at.items() if n != 4800}) == (None, [4800], [])
    at[9600] = finals(0.73, 0.735, 0.77)  # seed 3 gains 3 points: rejected, and the last rung needs its 2L
    length, need, rungs = ladder(LEDGER, at)
    assert length is None and need == [19200] and [r["passed"] for r in rungs] == [False, False]
    at[19200] = finals(0.74, 0.74, 0.80)
    length, need, rungs = ladder(LEDGER, at)
    assert (length, need, rungs[-1]["passed"]) == (9600, [], False)  # no rung accepted: L is the last


def test_a_diverged_run_never_passes_the_doubling_test():
    at = {2400: finals(0.70, 0.71, 0.72), 4800: finals(0.705, 0.0, 0.72), 9600: finals(0.70, 0.71, 0.72)}
    length, need, rungs = ladder(UNREVISED, at)
    assert rungs[0]["gains"][2] < 0 and not rungs[0]["passed"]  # seed 2's 2L run diverged: the rung fails
    assert (length, need, rungs[1]["passed"]) == (None, [19200], False)  # 4,800 is now its L: fails again
    at[19200] = finals(0.70, 0.71, 0.72)
    length, _, rungs = ladder(UNREVISED, at)
    assert (length, rungs[-1]["passed"]) == (9600, True)


def test_a_run_at_chance_never_passes_the_doubling_test():
    # revision 1: seed 2 at chance at L and at 2L "gains" nothing, yet the rung fails
    at = {2400: finals(0.70, 0.71, 0.72), 4800: finals(0.705, 0.10, 0.72), 9600: finals(0.71, 0.10, 0.72),
          19200: finals(0.71, 0.10, 0.72)}
    length, _, rungs = ladder(UNREVISED | {"final_accuracy": LEDGER["final_accuracy"]}, at)
    assert [r["passed"] for r in rungs] == [False, False, False] and rungs[1]["gains"][2] == 0 and length == 9600
    length, _, rungs = ladder(UNREVISED | {"final_accuracy": {"statistic": "tail_mean", "from": 0.7}}, at)
    assert rungs[0]["passed"] and length == 2400  # what the unrevised ledger let through (a loss "gains" < 1.5)
    # with `stability`, the rate is dropped where the run never learned; nothing longer is asked for
    got = choose_length(LEDGER, lambda n: at.get(n, {}))
    assert got.stalled == {"steps": 4800, "seeds": [2], "finals": at[4800]} and got.need == [] and got.length is None
    assert [r["rung"] for r in got.rungs] == [2400]  # the rung whose 2L run stalled is recorded, failed


def test_the_report_says_why_the_speed_claims_are_for_the_record_when_inception_has_not_converged():
    def curve(final, length):  # evaluations every L/10; the tail (>= 0.7 L) all at `final`
        steps = np.arange(1, 11) * length // 10
        return steps, np.where(steps >= 0.7 * length, final, final - 0.1)

    curves = {"inception": {s: curve(0.80, 9600) for s in (1, 2, 3)}}
    doubled = {1: curve(0.8454, 19200), 2: curve(0.81, 19200), 3: curve(0.80, 19200)}
    pre = check_preconditions({k: LEDGER[k] for k in ("final_accuracy", "doubling")}
                              | {"preconditions": {"inception_converged": LEDGER["preconditions"]["inception_converged"]}},
                              curves, 9600, doubled)["inception_converged"]
    assert not pre["holds"] and pre["per_seed"] == "gain 1: 4.54, 2: 1, 3: 0 points"
    note = horizon_note({"inception_converged": pre}, True)
    assert "**Inception had not converged** by the ledger's doubling test (per seed, Inception's final accuracy at " \
           "19,200 steps minus at 9,600 ≤ 1.5 points, both runs above 15%" in note and ": gain 1: 4.54, 2: 1, 3: 0 points" in note
    assert horizon_note({"inception_converged": pre | {"holds": True}}, True) == ""
    # the ladder's last rung as L: why no longer L was tried; an earlier L (a rung accepted) says nothing of it
    assert "No rung of the ledger's ladder (2,400, 4,800, 9,600) was accepted, so L is its last, and a further rung " \
           "(Inception at 38,400 steps) is beyond the protocol's budget." in horizon_note(
               {"inception_converged": pre}, True, (2400, 4800, 9600), 9600)
    assert "No rung" not in horizon_note({"inception_converged": pre}, True, (2400, 4800, 9600), 4800)


RULE = {0.0015: finals(0.4467, 0.6585, 0.6695), 0.0045: finals(0.6945, 0.6927, 0.7176),
        0.015: finals(0.7108, 0.6993, 0.7074), 0.045: finals(0.7427, 0.7367, 0.7182), 0.135: finals(0.1, 0.1, 0.1)}


def test_stability_drops_a_rate_whose_run_never_learned_and_takes_the_next_in_the_rules_order():
    # the committed record's numbers: at 0.045, seed 2's 9,600-step run stayed at chance (revision 1)
    assert rule_order(LEDGER, RULE) == [0.045, 0.015, 0.0045, 0.0015]  # 0.135 never learned: not in it
    at = {**{(r, 2400): f for r, f in RULE.items()}, (0.045, 4800): finals(0.7255, 0.8169, 0.7784),
          (0.045, 9600): finals(0.8055, 0.10, 0.8419)}
    got = choose_protocol(LEDGER, RULE, lambda r, n: at.get((r, n), {}))
    assert (got.rule_rate, got.rate, list(got.dropped)) == (0.045, 0.015, [0.045])
    assert got.dropped[0.045].stalled["steps"] == 9600 and got.ladder.need == [4800]  # 0.015 from its first rung
    at[(0.015, 4800)] = finals(0.72, 0.71, 0.10)  # 0.015 stalls too: the next is 0.0045
    got = choose_protocol(LEDGER, RULE, lambda r, n: at.get((r, n), {}))
    assert (got.rate, list(got.dropped), got.ladder.need) == (0.0045, [0.045, 0.015], [4800])
    dead = {**at, **{(r, 4800): finals(0.1, 0.1, 0.1) for r in (0.0045, 0.0015)}}
    got = choose_protocol(LEDGER, RULE, lambda r, n: dead.get((r, n), {}))
    assert got.rate is None and got.ladder is None and len(got.dropped) == 4  # every rate dropped
    # the unrevised ledger keeps the rule's rate and fails its rung instead
    got = choose_protocol(UNREVISED, RULE, lambda r, n: at.get((r, n), {}))
    assert got.rate == 0.045 and not got.dropped and got.ladder.need == [19200]


def test_the_driver_sweeps_the_next_rate_after_a_drop(monkeypatch, tmp_path):
    from repro import protocol

    done = {(0.045, 2400): RULE[0.045], (0.045, 4800): finals(0.7255, 0.8169, 0.7784),
            (0.045, 9600): finals(0.8055, 0.10, 0.8419), **{(r, 2400): f for r, f in RULE.items()}}
    swept = []

    def fake_sweep(overrides, runs_dir, jobs, dry_run):
        swept.append([o for o in overrides if o.startswith(("optim.lr", "train.steps"))])
        rate, steps = float(swept[-1][0].split("=")[1]), swept[-1][1].split("=")[1].split(",")
        for n in map(int, steps):  # 0.015 is converged from 4,800 steps: the rung 4,800 is accepted
            done[(rate, n)] = finals(0.80, 0.80, 0.80) if n >= 4800 else finals(0.7, 0.7, 0.7)

    monkeypatch.setattr(protocol, "sweep", fake_sweep)
    monkeypatch.setattr(protocol, "finals_from_runs", lambda d, s, led, r, n: (done.get((r, n), {}), None))
    monkeypatch.setattr(protocol, "_finished", lambda *a: True)
    decided = protocol.run_fig2(tmp_path, "cpu_tuned", ROOT / "results" / "fig2" / "protocol.yaml", tmp_path,
                                3, dry_run=True)
    assert swept == [["optim.lr=0.015", "train.steps=4800"], ["optim.lr=0.015", "train.steps=9600"]]
    assert decided == {"rate": 0.015, "length": 4800, "accepted": True}


TINY = {
    "scales": ["smoke"],
    "final_accuracy": {"statistic": "tail_mean", "from": 0.5},
    "rate_rule": {"variant": "inception", "rates": [0.01, 0.03], "extend_factor": 3, "seeds": [1], "steps": 4,
                  "tie": 0.001},
    "doubling": {"variant": "inception", "rungs": [4], "margin": 1.0},
    "preconditions": {"inception_converged": {"test": "doubling"},
                      "all_settled": {"test": "settled", "variants": ["inception", "bn_x30"], "from": 0.25, "x": 1.0}},
    "claims": [c for c in LEDGER["claims"]],
}


def test_suite_progress_counts_finished_part_way_and_missing_runs(tmp_path):
    recipe = ("optim.lr=0.01", "train.steps=8")

    def record(name, experiment, seed, status, last_step, overrides=recipe):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump(recipe_config(experiment, "smoke", (*overrides, f"seed={seed}"))))
        (d / "metrics.jsonl").write_text(json.dumps({"step": last_step}) + "\n")
        if status:
            (d / "summary.json").write_text(json.dumps({"status": status}))

    record("a", "bn_x5", 1, "complete", 8)
    record("b", "bn_x30", 2, "preempted", 3)  # stopped by a signal, with a checkpoint
    record("c", "inception", 1, None, 5)  # under way, or killed without a signal
    record("d", "inception", 2, "diverged", 6)  # an outcome: finished
    record("e", "bn_x5", 2, "complete", 8, ("optim.lr=0.02", "train.steps=8"))  # another rate: not the suite's
    assert suite_progress(tmp_path, "smoke", recipe, (1, 2)) == (
        "2 finished; 2 part-way (inception s1 at 5, bn_x30 s2 at 3); 8 not started")


@needs_mnist
@pytest.mark.slow
def test_protocol_runs_end_to_end_and_resumes_nothing_twice(tmp_path):
    ledger = tmp_path / "tiny.yaml"
    ledger.write_text(yaml.safe_dump(TINY))
    runs, out = tmp_path / "runs", tmp_path / "results"
    cmd = [sys.executable, "-m", "repro.protocol", "fig2", "--scale", "smoke", "--ledger", str(ledger), "--runs-dir",
           str(runs), "--out", str(out), "--jobs", "2", "--override", f"data.root={DATA}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rule = (out / "fig2_rule" / "smoke" / "report.md").read_text()
    assert "**Rule's rate:" in rule and "accepted" in rule and "![The rate rule and the doubling test](rule.png)" in rule
    drawn = json.loads((out / "fig2_rule" / "smoke" / "plotted.json").read_text())["rule.png"]
    assert sum("rule's rate" in k for k in drawn) == 1  # the chosen rate's star
    # the right panel: the winner's curves at 4 and 8 steps (one seed), each with its shaded tail
    assert sum(k.startswith("1 Inception at") and " / line " in k for k in drawn) == 2
    assert sum(k.startswith("1 Inception at") and " / patch " in k for k in drawn) == 2
    report = (out / "fig2" / "smoke" / "report.md").read_text()
    assert "The protocol ledger" in report and "final accuracy (the mean of its evaluations at steps ≥ 0.5 L)" in report
    # the protocol's "maximum" and Inception's rate are named as what they are, not as the paper's
    assert "ours: final accuracy (%), per seed" in report and "ours: max (%)" not in report
    # the doubling test's 8-step Inception is read by the precondition, not listed as excluded
    doubled = [p.parent.name for p in runs.glob("inception-*/config.yaml") if "steps: 8\n" in p.read_text()]
    assert len(doubled) == 1 and f"only: the doubling test's Inception at 8 steps ({doubled[0]})" in report
    assert f"excluded: {doubled[0]}" not in report
    assert "chosen by a rule that reads Inception's runs only" in report and "(§4.2.2) x lr_mult" not in report
    made = sorted(p.name for p in runs.glob("*/config.yaml"))
    # rates 0.01, 0.03 and the winner's extension at 4 steps, the winner at 8 steps, five more variants
    assert len(made) == 2 + 1 + 1 + 5, made
    # the doubling test's Inception at L is the suite's: one of its six runs was there before it started
    assert "protocol: the suite (6 variants x 1 seeds at 4 steps): 1 finished; 5 not started" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and sorted(p.name for p in runs.glob("*/config.yaml")) == made
    assert "protocol: the suite (6 variants x 1 seeds at 4 steps): 6 finished\n" in again.stdout
    assert verify(out) == []  # both reports rebuild from their runs.csv and meta.json alone
    # before the doubling test's 8-step run has finished, the rule's record says what is still to run
    part = tmp_path / "partial"
    part.mkdir()
    meta = json.loads((out / "fig2_rule" / "smoke" / "meta.json").read_text())
    long_runs = {m["run"] for m in meta["runs"] if m["steps"] == 8}
    meta["runs"] = [m for m in meta["runs"] if m["run"] not in long_runs]
    (part / "meta.json").write_text(json.dumps(meta))
    lines = (out / "fig2_rule" / "smoke" / "runs.csv").read_text().splitlines(keepends=True)
    (part / "runs.csv").write_text("".join(x for x in lines if x.split(",")[0] not in long_runs))
    assert long_runs and len(lines) > len((part / "runs.csv").read_text().splitlines())
    text = (render(part, part) / "report.md").read_text()
    assert "**In progress**: the test still needs Inception's runs of 8 steps" in text


@needs_mnist
@pytest.mark.slow
def test_a_signal_to_the_driver_stops_every_run_with_a_checkpoint(tmp_path):
    # Hydra's joblib workers outlive a parent that is killed alone; the driver signals the sweep as a group
    ledger = tmp_path / "long.yaml"
    ledger.write_text(yaml.safe_dump(TINY | {"rate_rule": TINY["rate_rule"] | {"steps": 1_000_000}}))
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "repro.protocol", "fig2", "--scale", "smoke", "--ledger", str(ledger), "--runs-dir",
           str(runs), "--out", str(tmp_path / "out"), "--jobs", "2", "--override", f"data.root={DATA}",
           "--override", "logger.wandb.mode=disabled"]
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            logs = [p.read_text() for p in runs.glob("*/train.log")]
            if len(logs) == 2 and all("step 1" in x for x in logs):  # both runs are past their first steps
                workers = [json.loads(p.read_text())["pid"] for p in runs.glob("*/lock.json")]
                break
            time.sleep(0.5)
        driver.send_signal(signal.SIGTERM)  # the driver alone, as `kill <pid>` does
        driver.wait(timeout=180)
    finally:
        driver.kill()
    err = log.read_text()
    assert driver.returncode == 2 and "each run of the sweep saved a checkpoint" in err, err[-2000:]
    dirs = sorted(p.parent for p in runs.glob("*/config.yaml"))
    assert len(dirs) == 2
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "preempted" and (d / "ckpt.pt").exists() and not (d / "lock.json").exists()
    assert len(workers) == 2
    deadline = time.monotonic() + 10  # killed, then reaped by whoever adopted them
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]  # no idle worker outlives the driver


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead and not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z")
