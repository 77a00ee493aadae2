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
    met = [f"batch {b}{' compiled' if c else ''}: **{x:.2f}x** ({'met' if x >= 1 else f'missed by {(1 - x) * 100:.0f}%'})"
           for b, c, x in ratios]
    prof = []
    for name, p in nets.get("profile", {}).items():
        busy = p["gpu_busy_ms_per_step"]
        head = (f"- **{name}**, batch {r['sizes']['batches'][0]}, eager: {p['wall_ms_per_step']:.1f} ms a step"
                + (f", of which the GPU computes {busy:.1f} ms ({busy / p['wall_ms_per_step']:.0%}) in "
                   f"{p['kernels_per_step']:.0f} kernels" if busy is not None else ""))
        tops = "; ".join(f"`{t['name'][:60]}` {t['ms_per_step']:.2f} ms" for t in p["top"][:5])
        prof.append(f"{head}. Largest: {tops}.")
    skipped = "".join(f"- {s}\n" for s in nets.get("skipped", []))
    return (f"Training steps (forward, backward, SGD with momentum) on random 224 px images, bf16 autocast, "
            f"channels_last, cuDNN autotuning; best of {r['sizes']['rounds']} timed rounds after "
            f"{r['sizes']['warmup']} warm-up steps. MACs are counted per image (convolutions and the classifier). "
            f"`first step` includes cuDNN autotuning and, compiled, the compilation.\n\n{table}\n"
            f"Target, ours per MAC ≥ 1.0x timm's inception_v3: " + "; ".join(met) + ".\n\n"
            "Where one step's time goes (torch.profiler, 5 steps):\n\n" + "\n".join(prof) + "\n"
            + (f"\nNot run:\n{skipped}" if skipped else ""))


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
            + f"\nOne checkpoint takes {x['checkpoint_s']:.2f} s; at the gpu scale's interval "
              f"({x['checkpoint_every_gpu_scale']:,} steps) that is {per:.2%} of the training time.\n")


def _training_ips(r: dict, batch: int) -> float | None:
    nets = r.get("networks", {})
    if "eager" not in nets:
        return None
    rows = [x for x in nets["eager"].get("bn_inception", []) + nets["compiled"].get("bn_inception", [])
            if x["batch"] == batch]
    return max((x["images_s"] for x in rows), default=None)


def pipeline(r: dict) -> str:
    x, fo = r["pipeline"], r["folder"]
    if (failed := _failed(x)) is not None:
        return failed
    train = _training_ips(r, x["batch"])
    rows = [["runner's folder loader (PIL decode + v2 transforms in CPU workers)", _f(x["loader_images_s"]),
             _f(x["loader_images_s"] / train, 2) if train else "—"],
            ["GPU decode (nvJPEG, `torchvision.io.decode_jpeg(device='cuda')`) + the same v2 transforms on the GPU",
             _f(x["gpu_decode_images_s"]), _f(x["gpu_decode_images_s"] / train, 2) if train else "—"]]
    if train:
        rows.append([f"bn_inception training at batch {x['batch']} (section 1, fastest)", _f(train), "1.00"])
    src = "real Fashion-MNIST images" if fo["from_real_fashion_mnist"] else "random stand-in images"
    return (f"A generated ImageFolder: {fo['train_unique']:,} unique {fo['jpeg_size'][0]}x{fo['jpeg_size'][1]} "
            f"JPEGs (quality 90, mean {fo['mean_kib']:.0f} KiB; {src} upscaled, tinted, with noise) listed "
            f"{fo['train'] // fo['train_unique']} times each ({fo['train']:,} training entries), 10 classes, "
            f"{fo['val']} validation images. Batch {x['batch']}, {x['workers']} workers, {x['batches_timed']} "
            f"batches timed after the first arrived. Transforms: `{x['transforms']}`.\n\n"
            + _table(["path", "img/s", "/ GPU training img/s"], rows)
            + ("\n" + _keep_up(x, train) if train else ""))


def _keep_up(x: dict, train: float) -> str:
    lo, gd = x["loader_images_s"] / train, x["gpu_decode_images_s"] / train
    if lo >= 1:
        return f"The folder loader keeps up with training ({lo:.2f}x what the GPU consumes).\n"
    return (f"The folder loader **cannot keep up**: it delivers {lo:.0%} of what the GPU trains, so a run on "
            f"this card would wait on its input {1 - lo:.0%} of the time. Decoding on the GPU delivers "
            f"{gd:.2f}x the training rate" + (" and removes the bottleneck" if gd >= 1 else "") + ".\n")


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
        rows.append([setting, s["runs"]["killed"]["killed_at_step"], ", ".join(s["resumed_from"]) or "—",
                     s["steps_compared"], "**yes**" if s["identical"] else "no",
                     " / ".join("—" if d[k] is None else f"{d[k]:.2g}" for k in ("loss", "test_acc", "test_loss")),
                     f"{_f(s['final_test_acc']['unbroken'], 4)} / {_f(s['final_test_acc']['resumed'], 4)}"])
        if s["nondeterministic_ops"]:
            out.append(f"Ops without a deterministic kernel ({setting}): " + "; ".join(s["nondeterministic_ops"]) + "\n")
        if s["log_tail"]:
            out.append(f"Log tail ({setting}):\n```\n{s['log_tail']}\n```\n")
    return out[0] + "\n" + _table(["settings", "killed at step", "resumed from step", "records", "identical",
                                   "max abs diff loss / acc / test loss", "final acc unbroken / resumed"], rows) \
        + "\n" + "\n".join(out[1:])


def hours(r: dict) -> str:
    h = r.get("hours")
    if not h:
        return "Not computed (section 1 failed).\n"
    measured = (f"at the measured {h['measured_images_s']:,.0f} images/s (bn_inception, batch 32, "
                f"{'compiled' if h['measured_compile'] else 'eager'}): **{h['measured_hours']:,.0f} GPU-hours** a variant "
                f"({h['measured_hours'] / 8:,.1f} h on 8 GPUs)") if "measured_hours" in h else "not measured"
    return (f"The paper scale trains {h['images']:,.0f} images a variant (3.75M steps of 32 on each of 8 replicas). "
            f"`conf/recipe/imagenet/paper.yaml` assumed {h['assumed_images_s']:,.0f} images/s per GPU "
            f"({h['assumed_hours']:,.0f} GPU-hours); {measured}. This counts the GPU alone: the input pipeline "
            f"(section 3) must deliver that rate too.\n")


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
    body = []
    for title, fn in parts:
        try:
            body.append(f"## {title}\n\n{fn(r)}")
        except KeyError as k:  # a section that did not run (time budget) says so
            body.append(f"## {title}\n\nNot measured (missing `{k.args[0]}` in gpu_check.json).\n")
    return head + "\n" + "\n".join(body)
