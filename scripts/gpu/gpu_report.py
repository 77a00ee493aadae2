"""report.md from gpu_check.json: every number in the report is read from that file."""

from __future__ import annotations


def _f(x, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def _failed(section: dict) -> str | None:
    return f"**Failed:** `{section['error']}`\n\n```\n{section.get('traceback', '')}\n```\n" if "error" in section else None


def _row(nets: dict, name: str, batch: int, compiled: bool) -> dict | None:
    rows = nets["compiled" if compiled else "eager"].get(name, [])
    return next((r for r in rows if r["batch"] == batch), None)


def networks(r: dict) -> str:
    nets = r["networks"]
    if (failed := _failed(nets)) is not None:
        return failed
    rows, ratios = [], []
    for compiled in (False, True):
        for ours in nets["compiled" if compiled else "eager"].get("bn_inception", []):
            b = ours["batch"]
            theirs = _row(nets, "timm inception_v3", b, compiled)
            ratio = ours["gmac_s"] / theirs["gmac_s"] if theirs else None
            if ratio is not None:
                ratios.append((b, compiled, ratio))
            for name in ("bn_inception", "inception_paper", "timm inception_v3"):
                x = _row(nets, name, b, compiled)
                if x is None:
                    continue
                rows.append([name, f"{b}{' (largest)' if x.get('largest') else ''}", "yes" if compiled else "no",
                             _f(x["macs"] / 1e6), _f(x["images_s"]), _f(x["gmac_s"]), _f(x["peak_gib"], 1),
                             _f(x["first_step_s"], 1), _f(ratio, 2) if name == "bn_inception" else ""])
    table = _table(["network", "batch", "compiled", "MMAC/img", "img/s", "GMAC/s", "peak GiB", "first step s",
                    "ours/timm per MAC"], rows)
    shape = ""
    if "shapes" in r and "macs" in r["shapes"].get("bn_inception", {}):
        o, t = r["shapes"]["bn_inception"], r["shapes"]["timm inception_v3"]
        shape = (f"Per image, bn_inception does {o['macs'] / t['macs']:.2f}x timm's MACs but produces "
                 f"{o['bn_elements'] / t['bn_elements']:.2f}x its BatchNorm outputs and "
                 f"{o['pool_elements'] / t['pool_elements']:.2f}x its pooled elements "
                 f"({o['bn_elements'] / 1e6:.2f}M / {o['pool_elements'] / 1e6:.2f}M against "
                 f"{t['bn_elements'] / 1e6:.2f}M / {t['pool_elements'] / 1e6:.2f}M): memory-bound work that a "
                 f"MAC count does not see.\n\n")
    slower = [f"{name} at batch {x['batch']} ({_f(x['images_s'])} img/s compiled, {_f(e['images_s'])} eager)"
              for name, rows in nets["compiled"].items() for x in rows
              if (e := _row(nets, name, x["batch"], False)) and x["images_s"] < e["images_s"]]
    met = [f"batch {b}{' compiled' if c else ''}: **{x:.2f}x** ({'met' if x >= 1 else f'missed by {(1 - x) * 100:.0f}%'})"
           for b, c, x in ratios]
    prof, b0 = [], r["sizes"]["batches"][0]
    for name, p in nets.get("profile", {}).items():
        busy, step_ms = p["gpu_busy_ms_per_step"], 1e3 * b0 / _row(nets, name, b0, False)["images_s"]
        head = (f"- **{name}**, batch {b0}, eager: {step_ms:.1f} ms a step ({p['wall_ms_per_step']:.1f} under the "
                f"profiler)" + (f", of which the GPU computes {busy:.1f} ms ({busy / step_ms:.0%}) in "
                                f"{p['kernels_per_step']:.0f} kernels" if busy is not None else ""))
        tops = "; ".join(f"`{t['name'][:60]}` {t['ms_per_step']:.2f} ms" for t in p["top"][:5])
        prof.append(f"{head}. Largest: {tops}.")
    if (g := nets.get("cudagraphs")) is not None:
        eager = _row(nets, "bn_inception", g["batch"], False)
        prof.append(f"- With `torch.compile(mode=\"reduce-overhead\")` (CUDA graphs: the step's kernels replayed "
                    f"without per-kernel launches), bn_inception at batch {g['batch']} trains at "
                    f"**{_f(g['images_s'])} img/s** ({g['images_s'] / eager['images_s']:.2f}x eager; first step "
                    f"{g['first_step_s']:.0f} s), peak {_f(g['peak_gib'], 1)} GiB.")
    skipped = "".join(f"- {s}\n" for s in nets.get("skipped", []))
    if nets.get("compiled_separately"):
        skipped += ("\nThe compiled rows come from a second, compile-only invocation on the same machine right after "
                    "the check (`compiled.json`): the check's own time budget ran out before its compilations.\n")
    return (f"Training steps (forward, backward, SGD with momentum) on random 224 px images, bf16 autocast, "
            f"channels_last, cuDNN autotuning; best of {r['sizes']['rounds']} timed rounds after "
            f"{r['sizes']['warmup']} warm-up steps. MACs are counted per image (convolutions and the classifier). "
            f"`first step` includes cuDNN autotuning and, compiled, the compilation.\n\n{table}\n"
            f"Target, ours per MAC ≥ 1.0x timm's inception_v3: " + "; ".join(met) + ".\n\n"
            + (f"Compiling made some steps slower, so a compiled ratio compares ours with a handicapped timm: "
               f"{'; '.join(slower)}.\n\n" if slower else "") + shape
            + "Where one step's time goes (torch.profiler, 5 steps):\n\n" + "\n".join(prof) + "\n"
            + (f"\nNot run:\n\n{skipped}" if skipped else ""))


def runner(r: dict) -> str:
    x = r["runner"]
    if (failed := _failed(x)) is not None:
        return failed
    per = x["checkpoint_s"] / (x["checkpoint_every_gpu_scale"] * x["batch"] / x["runner_images_s"])
    return (f"`repro.train.run` of {x['experiment']} (width {x['width']}, batch {x['batch']}, bf16 {x['amp']}, "
            f"channels_last) on {x['data']}, the images already on the device, against a bare loop (same model, optimizer, "
            f"batch, precision and images; indices drawn on the GPU; no augmentation, schedule or records). The "
            f"runner's rate is read from its own metrics between its first and last logged step "
            f"({x['timed_steps']} steps; the evaluations at both ends are outside).\n\n"
            + _table(["", "img/s"], [["bare loop", _f(x["bare_images_s"])], ["runner", _f(x["runner_images_s"])],
                                     ["**ratio runner/bare**", f"**{x['ratio']:.3f}** (target ≥ 0.95: "
                                      f"{'met' if x['ratio'] >= 0.95 else 'missed'})"]])
            + (f"\nThe bare loop was timed before and after the runner ({_f(x['bare_before_after'][0])} and "
               f"{_f(x['bare_before_after'][1])} img/s); the ratio uses the faster. " + _spread(x) + "\n"
               if "bare_before_after" in x else "")
            + (_ops(x["ops_per_step"]) if "ops_per_step" in x else "")
            + f"\nOne checkpoint takes {x['checkpoint_s']:.2f} s; at the gpu scale's interval "
              f"({x['checkpoint_every_gpu_scale']:,} steps) that is {per:.2%} of the training time.\n")


def _spread(x: dict) -> str:
    lo, hi = sorted(x["bare_before_after"])
    against_slower = x["runner_images_s"] / lo
    return (f"The bare loop's two timings differ by {hi / lo - 1:.1%}; against the slower one the ratio is "
            f"{against_slower:.3f}" + (", so at this check's precision the target is neither clearly met nor "
                                         "clearly missed." if against_slower >= 0.95 > x["ratio"] else "."))


def _ops(o: dict) -> str:
    extra = ", ".join(f"`{k}` {v:+.0f}" for k, v in list(o["extra"].items())[:8])
    return (f"\nOperators dispatched per step (each a kernel launch or a view): runner {o['runner']:.0f}, bare loop "
            f"{o['bare']:.0f} ({o['runner'] / o['bare'] - 1:+.1%}); the differences: {extra}.\n")


def _training_ips(r: dict, batch: int) -> float | None:
    nets = r.get("networks", {})
    if "eager" not in nets:
        return None
    rows = [x for x in nets["eager"].get("bn_inception", []) + nets["compiled"].get("bn_inception", [])
            if x["batch"] == batch]
    return max((x["images_s"] for x in rows), default=None)


PIPELINE_PATHS = (  # (key in gpu_check.json, what it is)
    ("loader_images_s", "runner's folder loader: PIL decode + v2 transforms in CPU workers"),
    ("gpu_decode_only_images_s", "nvJPEG decode on the GPU alone (`decode_jpeg(device='cuda')`), no augmentation"),
    ("gpu_batched_images_s", "nvJPEG decode + batched GPU crops/mirror/colour (`gpu_augment`: one roi_align, no hue)"),
    ("gpu_per_image_images_s", "nvJPEG decode + the runner's v2 transforms on the GPU, image by image"),
)


def pipeline(r: dict) -> str:
    x, fo = dict(r["pipeline"]), r["folder"]
    if (failed := _failed(x)) is not None:
        return failed
    if "gpu_decode_images_s" in x:  # the first check's name for the per-image path
        x["gpu_per_image_images_s"] = x.pop("gpu_decode_images_s")
    train = _training_ips(r, x["batch"])
    rows = [[what, _f(x[k]), _f(x[k] / train, 2) if train else "—"] for k, what in PIPELINE_PATHS if k in x]
    if train:
        rows.append([f"bn_inception training at batch {x['batch']} (section 1, fastest)", _f(train), "1.00"])
    src = "real Fashion-MNIST images" if fo["from_real_fashion_mnist"] else "random stand-in images"
    return (f"A generated ImageFolder: {fo['train_unique']:,} unique {fo['jpeg_size'][0]}x{fo['jpeg_size'][1]} "
            f"JPEGs (quality 90, mean {fo['mean_kib']:.0f} KiB; {src} upscaled, tinted, with noise) listed "
            f"{fo['train'] // fo['train_unique']} times each ({fo['train']:,} training entries), 10 classes, "
            f"{fo['val']} validation images. Batch {x['batch']}, {x['workers']} workers (reading files only, on the "
            f"GPU paths), up to {x['batches_timed']} batches timed after the first arrived. The runner's "
            f"transforms: `{x['transforms']}`.\n\n"
            + _table(["path", "img/s", "/ GPU training img/s"], rows)
            + ("\n" + _keep_up(x, train) if train else "")
            + "".join(f"\nNot measured in this check: {what}.\n" for k, what in PIPELINE_PATHS if k not in x))


def _keep_up(x: dict, train: float) -> str:
    lo = x["loader_images_s"] / train
    if lo >= 1:
        return f"The folder loader keeps up with training ({lo:.2f}x what the GPU consumes).\n"
    usable = {k: x[k] / train for k in ("gpu_batched_images_s", "gpu_per_image_images_s") if k in x}
    out = (f"The folder loader **cannot keep up**: it delivers {lo:.0%} of what the GPU trains, so a run on "
           f"this card would wait on its input {1 - lo:.0%} of the time.")
    if usable:
        best = max(usable, key=usable.get)
        out += (f" The fastest complete GPU path (`{best.removesuffix('_images_s')}`) delivers {usable[best]:.2f}x the "
                f"training rate ({usable[best] / lo:.2f}x the folder loader)"
                + (", enough to remove the bottleneck." if usable[best] >= 1 else ", not enough either."))
    if "gpu_decode_only_images_s" in x:
        ceil = x["gpu_decode_only_images_s"] / train
        out += (f" Decoding alone on the GPU reaches {ceil:.2f}x, a ceiling for any path that decodes with nvJPEG "
                f"one image at a time" + (": none of them can keep up." if ceil < 1 else "."))
    return out + "\n"


def resume(r: dict) -> str:
    x = r["resume"]
    if (failed := _failed(x)) is not None:
        return failed
    out = [f"`{x['command']} data.root=FOLDER [train.deterministic=true] runs_dir=...`: once unbroken; once "
           "killed (SIGKILL to the process group) after its first checkpoint, then started again with the same "
           "command, which resumes from that checkpoint. Compared: every logged record but the wall time.\n"]
    rows = []
    for setting in ("default", "deterministic"):
        s = x.get(setting)
        if s is None:
            continue
        d = s["max_abs_diff"]
        rows.append([setting, s["runs"]["killed"]["killed_at_step"], ", ".join(map(str, s["resumed_from"] or [])) or "—",
                     s["steps_compared"], "**yes**" if s["identical"] else "no",
                     " / ".join("—" if d[k] is None else f"{d[k]:.2g}" for k in ("loss", "test_acc", "test_loss")),
                     f"{_f(s['final_test_acc']['unbroken'], 4)} / {_f(s['final_test_acc']['resumed'], 4)}"])
        if not s["resumed_from"]:
            out.append(f"**{setting}: no resume happened.** The second launch found the run already finished "
                       f"({s['runs']['resumed']['seconds']:.0f} s against {s['runs']['unbroken']['seconds']:.0f} s "
                       "unbroken): the kill did not stop the worker, which ran on to the end. This row compares two "
                       "independent unbroken runs, not a resume.\n")
        if s["nondeterministic_ops"]:
            out.append(f"Ops without a deterministic kernel ({setting}): " + "; ".join(s["nondeterministic_ops"]) + "\n")
        if s["log_tail"]:
            out.append(f"Log tail ({setting}):\n```\n{s['log_tail']}\n```\n")
    return out[0] + "\n" + _table(["settings", "killed at step", "resumed from step", "records", "identical",
                                   "max abs diff loss / acc / test loss", "final acc unbroken / resumed"], rows) \
        + "\n" + "\n".join(out[1:])


def _mode(compile_: bool | str) -> str:
    return f"compiled, {compile_}" if isinstance(compile_, str) else "compiled" if compile_ else "eager"


def hours(r: dict) -> str:
    h = r.get("hours")
    if not h:
        return "Not computed (section 1 failed).\n"
    measured = (f"at the measured {h['measured_images_s']:,.0f} images/s (bn_inception, batch 32, "
                f"{_mode(h['measured_compile'])}): **{h['measured_hours']:,.0f} GPU-hours** a variant "
                f"({h['measured_hours'] / 8:,.1f} h on 8 GPUs)") if "measured_hours" in h else "not measured"
    return (f"The paper scale trains {h['images']:,.0f} images a variant (3.75M steps of 32 on each of 8 replicas). "
            f"`conf/recipe/imagenet/paper.yaml` assumed {h['assumed_images_s']:,.0f} images/s per GPU "
            f"({h['assumed_hours']:,.0f} GPU-hours); {measured}. This counts the GPU alone: the input pipeline "
            f"(section 3) must deliver that rate too.\n")


HEADLINES = (  # (column, how to read it from a gpu_check.json)
    ("bn_inception b32 img/s", lambda r: _f(_row(r["networks"], "bn_inception", 32, False)["images_s"])),
    ("timm b32 img/s", lambda r: _f(_row(r["networks"], "timm inception_v3", 32, False)["images_s"])),
    ("bn_inception b128 img/s", lambda r: _f(_row(r["networks"], "bn_inception", 128, False)["images_s"])),
    ("timm b128 img/s", lambda r: _f(_row(r["networks"], "timm inception_v3", 128, False)["images_s"])),
    ("GPU busy at b32", lambda r: f"{r['networks']['profile']['bn_inception']['gpu_busy_ms_per_step'] * 1e-3 * _row(r['networks'], 'bn_inception', 32, False)['images_s'] / 32:.0%}"),
    ("runner/bare", lambda r: f"{r['runner']['ratio']:.3f}"),
    ("folder loader img/s", lambda r: _f(r["pipeline"]["loader_images_s"])),
    ("deterministic resume", lambda r: _resumed(r["resume"]["deterministic"])),
)


def _resumed(s: dict) -> str:
    if not s.get("resumed_from"):  # the first run's kill missed torchrun's worker
        return "no resume took place"
    return f"from step {s['resumed_from'][0]}: " + ("bit-identical" if s["identical"] else "differs")


def history(r: dict) -> str:
    """One row per run of the check on this card (this one and the runs in the folders beside it)."""
    def cell(run, fn):
        try:
            return fn(run)
        except (KeyError, TypeError, StopIteration):
            return "—"

    runs = sorted([r] + r["earlier"], key=lambda x: x["env"]["date"])
    rows = [[x["env"]["date"], f"`{x['env']['git_commit'][:8]}`"] + [cell(x, fn) for _, fn in HEADLINES] for x in runs]
    return ("The same check on other machines of this kind. At batch 32 the step is bound by kernel launches "
            "(the GPU busy share), so its rate follows the host CPU and varies from machine to machine far more "
            "than the large-batch rates do.\n\n"
            + _table(["date", "commit"] + [c for c, _ in HEADLINES], rows))


def render(r: dict) -> str:
    e = r["env"]
    head = (f"# GPU check: {e['device']}\n\n"
            f"{e['date']}, commit `{e['git_commit']}`; Python {e['python']}, torch {e['torch']} (CUDA {e['cuda']}, "
            f"cuDNN {e['cudnn']}), torchvision {e['torchvision']}, timm {e['timm']}; {e['cpu_cores']} CPU cores"
            + (f", {e['memory_gib']:.0f} GiB on the card" if e["memory_gib"] else "") + ".\n\n"
            f"Made by `scripts/gpu_check.sh` (`make gpu-check`) in {r['seconds'].get('total', 0):.0f} s; every "
            f"number below is in `gpu_check.json` beside this file "
            f"(`python scripts/gpu_check.py --render gpu_check.json` rebuilds this page).\n")
    parts = [("1. Networks at 224 px", networks), ("2. The runner against a bare loop", runner),
             ("3. The input pipeline", pipeline), ("4. Kill and resume under torchrun", resume),
             ("5. GPU-hours at the paper's scale", hours)]
    if r.get("earlier"):
        parts.append(("6. Every run of this check on this card", history))
    body = []
    for title, fn in parts:
        try:
            body.append(f"## {title}\n\n{fn(r)}")
        except KeyError as k:  # a section that did not run (time budget) says so
            body.append(f"## {title}\n\nNot measured (missing `{k.args[0]}` in gpu_check.json).\n")
    return head + "\n" + "\n".join(body)
