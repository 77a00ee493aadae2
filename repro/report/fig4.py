"""Figure 4 report: one network single- and multi-crop, the six-network ensemble, and inference with
moving-average (EMA) vs population (Alg. 2) BN statistics.

Writes results/fig4/<scale>/: evaluations.json (cached: rebuilt only when the runs change), runs.csv,
meta.json, fig4.png, report.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scipy.stats

from repro.config.names import FIGURE_EXPERIMENTS
from repro.evaluate import evaluate_runs
from repro.report import Long, claims_section, fig4_paired, fmt, md_table, runs_section, save_figure
from repro.report.fig4_paired import wrong_bits
from repro.report.stats import normal_interval, summarize, verdict
from repro.runs.files import write_json

SINGLE, *MEMBERS = FIGURE_EXPERIMENTS["fig4"]
EXPERIMENTS = [SINGLE, *MEMBERS]
SEEDS = (1,)  # one network per row, as in the paper's Figure 4 and make reproduce-fig4: other seeds are not candidates
# Figure 4 of the paper (§4.2.3): top-1 / top-5 error (%), 50,000 ImageNet validation images.
PAPER = {"single_1crop": (25.2, 7.82), "single_144crop": (21.99, 5.82), "ensemble_144crop": (20.1, 4.9)}
PAPER_COLUMNS = ("top-1 error %", "top-5 error %")
# What is evaluated: name -> (networks, crops, BN statistics)
EVALS = {
    "single_1crop": ("single", 1, "ema"),
    "single_10crop": ("single", 10, "ema"),
    "single_144crop": ("single", 144, "ema"),
    "ensemble_1crop": ("members", 1, "ema"),
    "ensemble_144crop": ("members", 144, "ema"),
    "all_1crop_population": ("all", 1, "population"),
}


def run_evaluations(dirs: dict[str, list[str]], cache: Path, limit: int, pop_batches: int) -> dict:
    """Evaluate each entry of EVALS, reusing cached results for identical runs and settings."""
    old = json.loads(cache.read_text()) if cache.exists() else {}
    results = {}
    for name, (which, crops, bn) in EVALS.items():
        key = {"runs": dirs[which], "crops": crops, "bn_stats": bn, "limit": limit, "pop_batches": pop_batches,
               "test_set": "full"}
        if name in old and old[name]["key"] == key:
            results[name] = old[name]
            continue
        print(f"evaluating {name}: {len(dirs[which])} network(s), {crops} crop(s), {bn} BN statistics")
        r = evaluate_runs(dirs[which], crops, bn, pop_batches, limit=limit, full_test=True)
        labels = r.pop("labels")  # per image, kept as what each prediction got wrong (fig4_paired)
        r["wrong"] = {"combined": wrong_bits(r.pop("predictions"), labels)} | {
            Path(m["run_dir"]).name: wrong_bits(p, labels) for m, p in zip(r["per_model"], r.pop("model_predictions"))}
        results[name] = {"key": key, "result": r}
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, results | {k: v for k, v in old.items() if k not in results and k in EVALS})
    return results


def evaluation_rows(res: dict, seed: int, steps: int) -> list[tuple]:
    """runs.csv rows of the evaluations: each combined result under its evaluation's name, each network's
    own error under its run name (metric `<measure>/<evaluation>`), and the BN-statistics audit."""
    rows = []
    for name, v in res.items():
        r = v["result"]
        rows += [(name, seed, steps, k, r[k]) for k in ("top1_error", "top5_error", "n_images")]
        for m in r["per_model"]:
            run = Path(m["run_dir"]).name
            rows += [(run, m["seed"], steps, f"{k}/{name}", m[k]) for k in ("top1_error", "top5_error")]
            for k in ("dmean_mean", "dlogvar_mean"):
                if m.get("bn_audit") and k in m["bn_audit"][0]:
                    rows.append((run, m["seed"], steps, f"{k}/{name}", float(np.mean([a[k] for a in m["bn_audit"]]))))
    return rows


def evaluation_meta(res: dict, pop_batches: int) -> dict:
    r = res["single_1crop"]["result"]
    return {"members": {Path(m["run_dir"]).name: m["experiment"] for k in ("single_1crop", "ensemble_1crop")
                        for m in res[k]["result"]["per_model"]},
            "single": Path(r["per_model"][0]["run_dir"]).name, "data": r["dataset"], "crop_size": r["crop_size"],
            "top5_k": r["top5_k"], "num_classes": r["num_classes"], "pop_batches": pop_batches,
            "folded_bn": r.get("folded_bn", False)}  # evaluations before issue 22 ran the eval-mode network


def collect(sel, out: Path, scale: str, limit: int | None = None, pop_batches: int = 100, **_) -> tuple[list[tuple], dict]:
    """Evaluate (or reuse cached evaluations of) BN-x30 and the six members; rows for runs.csv."""
    limit = limit or DEFAULT_LIMIT.get(scale)
    single = [str(sel.runs[SINGLE][0].path)]
    members = [str(sel.runs[m][0].path) for m in MEMBERS]
    res = run_evaluations({"single": single, "members": members, "all": single + members},
                          out / "evaluations.json", limit, pop_batches)
    first = sel.runs[SINGLE][0]
    return evaluation_rows(res, first.seed, first.summary["steps"]), evaluation_meta(res, pop_batches) | {
        "train": {k: first.config["train"][k] for k in ("steps", "batch_size")}, "seed": first.seed,
        "train_limit_test": first.config["data"].get("limit_test")}


def collect_cached(cache: Path, scale: str) -> tuple[list[tuple], dict]:
    """runs.csv rows and meta from a committed evaluations.json alone, for runs made on another
    machine: their configs, identities and commits cannot be checked here, and the report says so."""
    from repro.runs.records import recipe_config

    res = json.loads(Path(cache).read_text())
    pop = res["all_1crop_population"]["key"]["pop_batches"]
    train = recipe_config(SINGLE, scale)["train"]
    meta = evaluation_meta(res, pop) | {"train": {k: train[k] for k in ("steps", "batch_size")}, "seed": 1}
    meta["runs"] = [{"run": run, "experiment": exp, "seed": 1, "status": "complete", "diverged_at": None,
                     "steps": train["steps"], "wall_s": None, "identity": None,
                     "provenance": "not checked: built from evaluations.json, the runs are not on this machine"}
                    for run, exp in meta["members"].items()]
    meta |= {"excluded": [], "missing_seeds": {}, "recipe_identity": {}}
    return evaluation_rows(res, 1, train["steps"]), meta


def error_drop(long: Long, a: str, b: str):
    """Error of `a` minus error of `b` (points) with a 95% normal interval over the n test images,
    se = sqrt(p_a(1-p_a)/n + p_b(1-p_b)/n): the pairing is ignored, so it is wider than exact."""
    pa, pb, n = long.value(a, "top1_error") / 100, long.value(b, "top1_error") / 100, long.value(a, "n_images")
    se = 100 * math.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / n)
    return normal_interval(100 * (pa - pb), se, f"normal interval over {n:,.0f} images")


def pop_ema_pairs(long: Long, meta: dict) -> list[tuple[str, float, float]]:
    """(network, EMA top-1, population top-1) for each of the seven networks, single crop."""
    out = []
    for run, exp in meta["members"].items():
        ema = long.value(run, "top1_error/single_1crop") if exp == SINGLE else long.value(run, "top1_error/ensemble_1crop")
        out.append((exp, ema, long.value(run, "top1_error/all_1crop_population")))
    return sorted(out)


def measure(claim: dict, long: Long, meta: dict, wrong: dict | None, boot: dict) -> dict:
    """The claim's summary: paired over the same images where the evaluations recorded each image (the
    ledger's test since issue 22), else the previous revision's unpaired interval, as the ledger says."""
    if wrong is not None:
        if claim["statistic"] == "error_drop":
            labels, s, test = fig4_paired.error_drop(wrong, claim["a"], claim["b"], boot)
            return {"seeds": labels, "summary": s, "test": test, "stability": "— (one seed: the interval is over images)"}
        labels, s, test, stable = fig4_paired.pop_ema_gap(wrong, meta["members"], SINGLE, boot, claim)
        return {"seeds": labels, "summary": s, "test": test, "stability": stable}
    if claim["statistic"] == "error_drop":
        return {"seeds": [f"seed {meta['seed']}"], "summary": error_drop(long, claim["a"], claim["b"])}
    pairs = pop_ema_pairs(long, meta)
    return {"seeds": [e for e, _, _ in pairs], "summary": summarize([abs(p - e) for _, e, p in pairs])}


def error_ci(error_pct: float, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95% interval of an error rate (%) measured on n test images."""
    ci = scipy.stats.binomtest(round(error_pct / 100 * n), n).proportion_ci(0.95, method="exact")
    return 100 * ci.low, 100 * ci.high


def plot(long: Long, meta: dict, path: Path, results: list[dict]) -> None:
    """Three panels on their own axes: the paper's ImageNet bars, ours with 95% intervals over the test
    images, and each claim's statistic with the interval its verdict reads (paired where the report is)."""
    names = ["single_1crop", "single_10crop", "single_144crop", "ensemble_1crop", "ensemble_144crop"]
    labels = ["1 net\n1 crop", "1 net\n10 crops", "1 net\n144 crops", "6 nets\n1 crop", "6 nets\n144 crops"]
    n = int(long.value("single_1crop", "n_images"))
    ours = np.array([long.value(k, "top1_error") for k in names])
    ci = np.array([error_ci(v, n) for v in ours])
    fig, (pa, oa, ca) = plt.subplots(1, 3, figsize=(15, 3.9), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    x = np.arange(len(names))
    have = [i for i, k in enumerate(names) if k in PAPER]
    pa.bar(x[have], [PAPER[names[i]][0] for i in have], 0.6, color="tab:gray")
    for i in have:
        pa.text(x[i], PAPER[names[i]][0], f"{PAPER[names[i]][0]:.2f}", ha="center", va="bottom", fontsize=8)
    pa.set(xticks=x, xticklabels=labels, ylabel="top-1 error (%)",
           title="paper: ImageNet, 1000 classes, 50,000 images\n(no bar: not reported)")
    oa.bar(x, ours, 0.6, color="tab:red", yerr=[ours - ci[:, 0], ci[:, 1] - ours], capsize=4, ecolor="k")
    for xi, v, hi in zip(x, ours, ci[:, 1]):
        oa.text(xi, hi, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    oa.set(xticks=x, xticklabels=labels, ylabel="top-1 error (%)",
           title=f"ours: {meta['data']['dataset']}, {meta['num_classes']} classes, {n:,} images\n"
                 "error bars: exact 95% interval over the images")
    for ax in (pa, oa):
        ax.grid(axis="y", alpha=0.3)
    for i, r in enumerate(results):  # the claims, top to bottom in ledger order
        s, threshold = r["summary"], float(r["claim"]["threshold"])
        ca.errorbar(s.mean, -i, xerr=[[s.mean - s.lo], [s.hi - s.mean]], fmt="o", color="k", capsize=4)
        ca.plot([threshold] * 2, [-i - 0.3, -i + 0.3], color="tab:blue", lw=2)
        word = verdict(s, r["claim"]["op"], threshold).strip("*")
        ca.text(0.03, -i + 0.33, f"{s.mean:.2f} [{s.lo:.2f}, {s.hi:.2f}] {r['claim']['op']} {threshold:g}: {word}",
                transform=ca.get_yaxis_transform(), fontsize=8)  # x in axes units: always inside
    ca.set(yticks=-np.arange(len(results)), yticklabels=[r["claim"]["id"].replace("_", "\n", 1) for r in results],
           ylim=(-len(results) + 0.5, 0.7), xlabel="points of top-1 error (a − b; population: mean |pop − EMA|)",
           title="claims: 95% interval each verdict reads\n(blue: the ledger's threshold)")
    ca.margins(x=0.15)
    ca.grid(axis="x", alpha=0.3)
    fig.suptitle("Figure 4: crops and ensembles (separate axes: different tasks)", y=1.07)
    save_figure(fig, path)
    plt.close(fig)


PAIRED_NOTE = ("Every compared pair of predictions is on the same test images, so each claim is judged on the "
               "per-image differences (`repro/report/fig4_paired.py`): a 95% paired-bootstrap interval over the "
               "images (and the networks, for the population claim), with the exact McNemar test of the "
               "discordant images beside it.")
UNPAIRED_NOTE = ("One network per row and one seed, so the two error-drop claims take their interval over the test "
                 "images (normal approximation, pairing ignored: wider than exact); the population claim is per "
                 "network. These evaluations predate per-image records, so the ledger's paired test (issue 22) "
                 "cannot be applied to them: they are judged by its previous revision's intervals, as it says.")


# Test images evaluated when --limit is not given: every one (the ledger since issue 22: the committed cpu
# report's first 2,000 could not separate its differences); smoke-scale tests keep the first 2,000.
DEFAULT_LIMIT = {"smoke": 2000}


def render(long: Long, meta: dict, ledger: dict, out: Path) -> str:
    scale = meta["scale"]
    k5, data, classes, n = meta["top5_k"], meta["data"], meta["num_classes"], int(long.value("single_1crop", "n_images"))
    rows = []
    for name, label, (crops, models) in [
        ("single_1crop", "BN-Inception single crop (BN-x30)", (1, 1)),
        ("single_10crop", "BN-Inception 10 crops", (10, 1)), ("single_144crop", "BN-Inception multicrop", (144, 1)),
        ("ensemble_1crop", "BN-Inception ensemble, 1 crop", (1, 6)),
        ("ensemble_144crop", "BN-Inception ensemble", (144, 6))]:
        p = PAPER.get(name)
        rows.append([label, crops, models, f"{p[0]}%" if p else "—", f"{p[1]}%" if p else "—",
                     f"{long.value(name, 'top1_error'):.2f}%", f"{long.value(name, 'top5_error'):.2f}%"])
    runs = {exp: run for run, exp in meta["members"].items()}
    pop_rows = [[exp, f"{ema:.2f}%", f"{pop:.2f}%", fmt(long.value(runs[exp], "dmean_mean/all_1crop_population"), 3),
                 fmt(long.value(runs[exp], "dlogvar_mean/all_1crop_population"), 3)] for exp, ema, pop in pop_ema_pairs(long, meta)]
    gaps = [ema - pop for _, ema, pop in pop_ema_pairs(long, meta)]
    member_rows = [[exp, f"{long.value(runs[exp], 'top1_error/ensemble_144crop'):.2f}%"] for exp in MEMBERS]
    wrong = fig4_paired.per_image(Path(meta["data_dir"])) if meta.get("data_dir") else None
    walls = fig4_paired.evaluation_seconds(Path(meta["data_dir"])) if meta.get("data_dir") else None
    evaluated = (f"- Evaluation: the six evaluations took {walls / 60:.1f} min on this machine (their wall times are in "
                 "`evaluations.json`).\n" if walls else "")
    inference = ("- Inference: each network as Alg. 2's inference network, every BN that follows a conv folded into "
                 "it\n  (`repro.evaluate.inference_network`; per-activation BN layers stay as they are).\n"
                 if meta.get("folded_bn") else "")
    boot = ledger.get("bootstrap", {"reps": 10000, "seed": 0})
    results = [{"claim": c, **measure(c, long, meta, wrong, boot)} for c in ledger["claims"]]
    plot(long, meta, out / "fig4.png", results)
    tests = "".join(f"- {r['claim']['id']}: {r['test']}\n" for r in results if r.get("test"))
    subset = (f"All rows use the **first {n:,} of {data['n_test']:,} test images** (`--limit`: 144 views "
              "of 7 networks on every image would take most of an hour on 2 cores)" if n < data["n_test"]
              else f"All rows use all **{n:,} test images**")
    if (during := meta.get("train_limit_test")) and during < n:
        subset += (f" (the runs' own evaluations during training used the first {during:,}; Figure 4 scores every "
                   "image of the test split, `repro.evaluate --full-test-set`)")
    few_classes = f"; with {classes} classes it is near zero" if classes < 100 else ""
    return f"""# Figure 4 — multi-crop, ensemble, and population statistics ({scale} scale)

Reproduces the BN-Inception rows of Figure 4 of Ioffe & Szegedy (2015) (§4.2.3) and compares
inference with moving averages against Alg. 2's population statistics. Built by
`python -m repro.report fig4 --scale {scale}` (evaluations cached in `evaluations.json`); every number
below is re-derived from `runs.csv` and `meta.json` beside this file by `python -m repro.report verify`.

## What was run
- Networks: BN-x30 (`{meta['single']}`) as the single network, and six ensemble members,
  each BN-x30 changed by some of larger initial conv weights, dropout 5%/10% and per-activation BN in
  the last hidden layer(s) (`conf/experiment/ensemble_*.yaml`; the assignment is our choice, §4.2.3
  does not give it). Each trained at {scale} scale: {meta['train']['steps']:,} steps of
  {meta['train']['batch_size']}, seed {meta['seed']}.
- Data: {data['dataset']}, {data['source']}. {subset}; the paper used ImageNet's 50,000 validation
  images. Top-{k5} error is reported as top-5 is on ImageNet{few_classes}.
- Views: `repro/crops.py` — 10 = 4 corners + center at scale 256/224, mirrored; 144 = GoogLeNet's
  4 scales x 3 squares x 6 crops x 2 mirrors, with the scales set relative to the {meta['crop_size']} px input
  (on square images the three squares coincide; the average over the 144 views equals that over the 48 distinct ones).
  Probabilities are averaged over views, then over networks (§4.2.3).
{inference}{evaluated}- Population statistics: Alg. 2 over {meta['pop_batches']} training mini-batches of the training batch size,
  variance x m/(m-1) with m = batch x height x width for conv layers.

{runs_section(meta)}
## Claims
{PAIRED_NOTE if wrong is not None else UNPAIRED_NOTE}
The ledger's thresholds were fixed before the runs; its interval rule was added in commit
`{(meta['ledger']['ledger_commit'] or '?')[:10]}`, thresholds unchanged{', after these evaluations were made' if not meta['recipe_identity'] else ''}.

{claims_section(results, previous=meta['previous'])}{chr(10) + 'Paired tests on the same images:' + chr(10) + chr(10) + tests if tests else ''}
## Figure 4 table (paper: ImageNet, 1000 classes; ours: {data['dataset']}, {classes} classes)
{md_table(['model', 'crops', 'models', 'paper top-1', 'paper top-5', 'ours top-1', f'ours top-{k5}'], rows)}
![Figure 4](fig4.png)

Ensemble members, 144 crops each:

{md_table(['member', 'top-1 error'], member_rows)}
## Moving averages vs population statistics (single crop)
`dmean`: mean over BN layers and channels of |μ_EMA − μ_pop| / σ_pop; `dlogvar`: of |log(σ²_EMA / σ²_pop)|.

{md_table(['network', 'EMA top-1', 'population top-1', 'dmean', 'dlogvar'], pop_rows)}
Population statistics give the lower error for {sum(g > 0 for g in gaps)} of {len(gaps)} networks, by
{np.mean(gaps):+.2f} points on average (EMA minus population): the moving averages lag the final weights,
as later work found (Wu & Johnson 2021, PreciseBN; docs/paper-notes.md).

## Deviations from the paper
- Scale and data: see "What was run"; differences of a fraction of a point are within the noise of {n:,} images (±{100 * np.sqrt(0.1 * 0.9 / n):.1f} points at 10% error, one standard error).
- The paper's ensemble members each trained ~6M steps on ImageNet; ours {meta['train']['steps']:,} steps.
- Which members got which modification, the init scale (x2) and the per-activation BN depth are our choices.
"""
