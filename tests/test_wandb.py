"""The wandb mirror, read back from its offline files (no network): tags and group of a training run,
a killed-and-resumed run replayed into one history by `python -m repro.wandb sync`, idempotently."""

from __future__ import annotations

import json
import time
from pathlib import Path

from repro.runs import files
from repro.runs.wandb_mirror import main as wandb_main
from repro.train import run
from tests.conftest import run_killed_after
from tests.wandb_files import OfflineRun


def _offline(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


def test_killed_and_resumed_offline_run_replays_into_one_history(smoke, tmp_path, capsys):
    cfg = smoke("experiment=fig1_bn", "logger.wandb.mode=offline", "train.checkpoint_every=100", "resume=auto")
    assert cfg.logger.wandb.dir == str(tmp_path / "runs" / "wandb")  # follows runs_dir
    run_killed_after(cfg, 150)  # logged steps 0-150, checkpoint at 100
    summary = run(cfg)  # resumes from step 100 and logs 150-300 again
    run_dir = Path(summary["run_dir"])
    steps = [r["step"] for r in files.read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == [0, 50, 100, 150, 200, 250, 300]

    # Live mirror: tagged and grouped; each start wrote its own offline folder of the one id
    live = [OfflineRun(f) for f in _offline(tmp_path / "runs" / "wandb")]
    assert [r.run.run_id for r in live] == [summary["wandb_id"]] * 2
    assert live[0].run.run_group == "fig1_bn-smoke" and live[0].run.job_type == "train"
    assert sorted(live[0].tags) == ["family:fig1", "figure:fig1", "scale:smoke"]
    assert live[0].steps() == [0, 50, 100, 150] and live[1].steps() == [150, 200, 250, 300]
    assert live[0].steps("_step") == live[0].steps()  # wandb's step is the training step
    assert any(r.WhichOneof("record_type") == "stats" for r in live[0].records)  # system metrics on by default
    assert not any(k.startswith("probe") for row in live[1].history[:-1] for k in row)  # no 24 scalar panels
    end = live[1].history[-1]  # the probe as one table and one line chart, at the end
    table = json.loads(live[1].file(end["probe/percentiles/path"]).read_text())
    probed = [r for r in files.read_jsonl(run_dir / "metrics.jsonl") if "probe" in r]
    assert table["columns"] == ["step", "unit", "p15", "p50", "p85"]
    assert table["data"][-1] == [300, 7, *(probed[-1]["probe"][q][7] for q in ("p15", "p50", "p85"))]
    assert len(table["data"]) == len(probed) * cfg.train.probe_units and "probe/median_table/path" in end

    # sync: one history from the local files, the same id; a second sync adds nothing
    replays = tmp_path / "runs" / "wandb" / "replay" / run_dir.name
    synced_at = time.time()
    assert wandb_main(["sync", str(run_dir), "--mode", "offline"]) == 0
    assert "replayed 7 step(s)" in capsys.readouterr().out
    (folder,) = _offline(replays)
    replayed = OfflineRun(folder)
    assert replayed.run.run_id == summary["wandb_id"] == json.loads((run_dir / "summary.json").read_text())["wandb_id"]
    assert replayed.steps() == replayed.steps("_step") == steps
    assert [row["test_acc"] for row in replayed.history if "test_acc" in row] == \
        [r["test_acc"] for r in files.read_jsonl(run_dir / "metrics.jsonl") if "test_acc" in r]
    assert replayed.summary["final_test_acc"] == summary["final_test_acc"]
    assert replayed.run.run_group == "fig1_bn-smoke" and sorted(replayed.tags) == sorted(live[0].tags)
    # the training's times, console and nothing of the replaying process's own
    rows, walls = [r for r in replayed.history if "step" in r], [r["wall"] for r in files.read_jsonl(run_dir / "metrics.jsonl")]
    assert [round(r["_timestamp"] - rows[0]["_timestamp"], 3) for r in rows] == [round(w - walls[0], 3) for w in walls]
    assert rows[-1]["_timestamp"] <= synced_at  # the training's clock, before the sync began
    assert replayed.file("output.log").read_text() == (run_dir / "train.log").read_text()
    assert not any(r.WhichOneof("record_type") == "stats" for r in replayed.records)
    log = next(folder.glob("run-*.wandb"))
    before = log.read_bytes()
    assert wandb_main(["sync", str(run_dir), "--mode", "offline"]) == 0
    assert "nothing added" in capsys.readouterr().out
    assert _offline(replays) == [folder] and log.read_bytes() == before


def test_sync_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert wandb_main(["sync", str(tmp_path), "--mode", "offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a run directory" in err and len(err.strip().splitlines()) == 1


def test_a_runs_figure_tags_come_from_the_figures_experiments():
    # repro.config.names is the one table: the reports list these experiments, the tags name these figures
    from repro.config import CONF_DIR
    from repro.config.names import FIGURE_EXPERIMENTS
    from repro.report import fig1, fig2, fig4
    from repro.runs.wandb_mirror import figures_of

    assert figures_of("bn_x30") == ["fig2", "fig4"] and figures_of("fig1_bn") == ["fig1"] and figures_of("x") == []
    assert list(fig2.PAPER) == fig2.VARIANTS == list(FIGURE_EXPERIMENTS["fig2"])  # the paper's rows, in order
    assert fig1.EXPERIMENTS == list(FIGURE_EXPERIMENTS["fig1"]) and fig4.EXPERIMENTS == list(FIGURE_EXPERIMENTS["fig4"])
    assert all((Path(CONF_DIR) / "experiment" / f"{e}.yaml").is_file() for es in FIGURE_EXPERIMENTS.values() for e in es)
