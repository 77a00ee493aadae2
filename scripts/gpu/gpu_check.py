"""One prepared accelerator check: the 224 px networks, the runner and the input pipeline on one GPU.

    scripts/gpu/gpu_check.sh                  # on the GPU machine (~6 min on one H100/H200)
    GPU_CHECK_CPU=1 scripts/gpu/gpu_check.sh  # the same sections at tiny sizes on the CPU (a test)

Every comparison is measured side by side in this one process:
1. networks: training images/s, MAC/s and peak memory of bn_inception, inception_paper and timm's
   inception_v3 at 224 px (bf16 autocast, channels_last), batch 32, 128 and the largest power of two
   that fits, eager and torch.compile; a profile of one step says where the time goes.
2. runner: `repro.train.run` against a bare loop on the same model, batch and data on the GPU (timed
   before and after the runner), and the operators each dispatches per step.
3. pipeline: the runner's folder loader (JPEG decode + Inception crops + colour distortion in CPU
   workers) on a generated ImageFolder of ImageNet-sized JPEGs, against GPU decoding (nvJPEG) with the
   same augmentations on the GPU, against the GPU's training images/s.
4. resume: `torchrun --nproc_per_node=1` of bn_x30 at gpu scale on that folder at 224 px with
   evaluations and checkpoints, killed after its first checkpoint and resumed with resume=auto; its
   curve against an unbroken run's, with default and with deterministic settings.
5. hours: the paper scale's GPU-hours from the measured images/s.

Writes OUT/<card>/gpu_check.json (every number) and OUT/<card>/report.md (rendered from it;
`--render JSON` renders again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "scripts" / "gpu")]

import gpu_pipeline  # noqa: E402
import gpu_runner  # noqa: E402
from bench_models import make_step, seconds  # noqa: E402
from gpu_report import render  # noqa: E402

import repro.models  # noqa: E402,F401  (registers the paper's networks with timm)
from repro.models import count_macs  # noqa: E402
from repro.runs import files, rundir  # noqa: E402


@dataclass
class Sizes:
    """What each section runs: the real check on a GPU, a dry run of the same code on the CPU."""

    img: int = 224
    width: float = 1.0  # our networks' width (timm's inception_v3 has none)
    classes: int = 1000
    batches: tuple[int, ...] = (32, 128)  # then the largest power of two that fits
    steps: int = 20  # timed steps per round
    warmup: int = 5
    rounds: int = 3
    compile: bool = True
    runner_steps: int = 1200
    folder_train: int = 2048  # unique generated training JPEGs ...
    folder_links: int = 10  # ... each listed this many times (hard links): 20,480 a pass
    folder_val: int = 500
    jpeg_size: tuple[int, int] = (500, 375)  # width, height: a typical ImageNet photo
    workers: int = 16
    loader_batch: int = 128
    loader_batches: int = 160  # ten rounds of 16 workers: start-up and round effects stay small
    resume_steps: int = 120
    resume_every: int = 60  # checkpoint interval; the run is killed after step 1.5x this
    resume_settings: tuple[str, ...] = ("default", "deterministic")


CPU_SIZES = Sizes(img=75, width=0.125, classes=10, batches=(2,), steps=1, warmup=0, rounds=1, compile=False,
                  runner_steps=12, folder_train=24, folder_links=2, folder_val=10, jpeg_size=(120, 90),
                  workers=2, loader_batch=8, loader_batches=4, resume_steps=16, resume_every=4,
                  resume_settings=("default",))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# 1. Networks at 224 px


def _nets(sz: Sizes) -> dict:
    return {
        "bn_inception": lambda: timm.create_model("bn_inception", num_classes=sz.classes, width=sz.width),
        "inception_paper": lambda: timm.create_model("inception_paper", num_classes=sz.classes, width=sz.width),
        "timm inception_v3": lambda: timm.create_model("inception_v3", num_classes=sz.classes),
    }


def _time_net(make, sz: Sizes, batch: int, device, compile_: bool | str) -> dict:
    """Images/s (best round) and peak memory of SGD training steps on random data."""
    model = make()
    macs = count_macs(model, torch.randn(1, 3, sz.img, sz.img))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = make_step(model, sz.img, 3, batch, device, amp=True, compile_=compile_)
    steps = max(3, sz.steps * 32 // batch) if batch > 32 else sz.steps  # large batches: fewer, longer steps
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(sz.warmup):
        step()
    best = min(seconds(step, steps, device) for _ in range(sz.rounds))
    ips = batch * steps / best
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"batch": batch, "compile": compile_, "macs": macs, "images_s": ips, "gmac_s": ips * macs / 1e9,
            "peak_gib": peak, "first_step_s": first}


@torch.no_grad()
def shapes(sz: Sizes) -> dict:
    """Per image, on the CPU: MACs, and the elements that batch norms and pools produce (memory-bound
    work), for each network, counted at the operator level so functional pools (timm's) count too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Elements(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = {"bn_elements": 0, "pool_elements": 0}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            key = "bn_elements" if "batch_norm" in name else "pool_elements" if "pool2d" in name else None
            if key and "adaptive" not in name:  # the global pool before the classifier is not a layer's work
                self.n[key] += (out[0] if isinstance(out, tuple) else out).numel()
            return out

    out = {}
    for name, make in _nets(sz).items():
        model, x = make().eval(), torch.randn(1, 3, sz.img, sz.img)
        with Elements() as e:
            model(x)
        out[name] = {"macs": count_macs(model, x)} | e.n
    return out


def _largest_batch(rows: list[dict], device) -> int | None:
    """The largest power of two whose peak memory, extrapolated linearly from two measured batches,
    stays under 85% of the card."""
    if device.type != "cuda" or len(rows) < 2:
        return None
    (b0, m0), (b1, m1) = [(r["batch"], r["peak_gib"]) for r in rows[:2]]
    per_image = (m1 - m0) / (b1 - b0)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    b = b1
    while m0 + per_image * (2 * b - b0) < 0.85 * total:
        b *= 2
    return b if b > b1 else None


def _profile(make, sz: Sizes, device) -> dict:
    """Where one eager step of batch 32 spends its time: GPU kernel time against wall time, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(make(), sz.img, 3, sz.batches[0], device, amp=True)
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    n = min(5, sz.steps)
    with profile(activities=activities) as prof:
        wall = seconds(step, n, device)
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        total = sum(e.self_device_time_total for e in kernels) / 1e3 / n
        top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]
        top_rows = [{"name": e.key[:80], "ms_per_step": e.self_device_time_total / 1e3 / n, "calls_per_step": e.count / n}
                    for e in top]
        launches = sum(e.count for e in kernels) / n
    else:
        total, launches = None, None
        top_rows = [{"name": e.key[:80], "ms_per_step": e.self_cpu_time_total / 1e3 / n, "calls_per_step": e.count / n}
                    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]]
    return {"wall_ms_per_step": wall / n * 1e3, "gpu_busy_ms_per_step": total, "kernels_per_step": launches,
            "top": top_rows}


def networks(sz: Sizes, device) -> dict:
    """Eager rows for every network and batch, then the profile of one step."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = {"eager": {}, "compiled": {}, "profile": {}, "skipped": []}
    for name, make in _nets(sz).items():
        rows = []
        for b in sz.batches:
            rows.append(_time_net(make, sz, b, device, False))
            log(f"  {name} b{b}: {rows[-1]['images_s']:.0f} img/s, {rows[-1]['peak_gib'] or 0:.1f} GiB")
        big = _largest_batch(rows, device)
        while big:
            try:
                rows.append(_time_net(make, sz, big, device, False) | {"largest": True})
                log(f"  {name} b{big} (largest): {rows[-1]['images_s']:.0f} img/s, {rows[-1]['peak_gib']:.1f} GiB")
                break
            except torch.cuda.OutOfMemoryError:
                big //= 2
                big = big if big > sz.batches[-1] else None
        out["eager"][name] = rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name in ("bn_inception", "timm inception_v3"):
        try:
            out["profile"][name] = _profile(_nets(sz)[name], sz, device)
        except Exception as e:  # the timings above stand without it
            out["skipped"].append(f"profile of {name}: {type(e).__name__}: {str(e)[:200]}")
    if not sz.compile:
        out["skipped"].append("torch.compile: not run in the CPU dry run")
    return out


def compiled(nets: dict, sz: Sizes, device, deadline: float, save) -> None:
    """torch.compile rows, one compilation per network and batch, while the time budget lasts."""
    if not sz.compile:
        return
    for b in dict.fromkeys((sz.batches[-1], sz.batches[0])):  # 128 first: the H200 run lacks timm's compiled 128
        for name in ("bn_inception", "timm inception_v3"):
            if time.time() > deadline:
                nets["skipped"].append(f"compile {name} batch {b}: the time budget was spent")
                continue
            torch._dynamo.reset()
            try:
                nets["compiled"].setdefault(name, []).append(_time_net(_nets(sz)[name], sz, b, device, True))
                log(f"  compiled {name} b{b}: {nets['compiled'][name][-1]['images_s']:.0f} img/s")
            except Exception as e:  # a compiler failure is a finding, not the end of the check
                nets["skipped"].append(f"compile {name} batch {b}: {type(e).__name__}: {str(e)[:200]}")
            save()
    # Launches take about half of a batch-32 step (the profile above): CUDA graphs remove them.
    if time.time() > deadline:
        nets["skipped"].append("compile bn_inception batch 32, mode reduce-overhead: the time budget was spent")
        return
    torch._dynamo.reset()
    try:
        nets["cudagraphs"] = _time_net(_nets(sz)["bn_inception"], sz, sz.batches[0], device, "reduce-overhead")
        log(f"  compiled bn_inception b{sz.batches[0]} reduce-overhead: {nets['cudagraphs']['images_s']:.0f} img/s")
    except Exception as e:
        nets["skipped"].append(f"compile bn_inception batch 32, mode reduce-overhead: {type(e).__name__}: {str(e)[:200]}")
    save()


# ----------------------------------------------------------------------------------------------
# 5. GPU-hours at the paper's scale


def hours(nets: dict) -> dict:
    paper = yaml.safe_load((ROOT / "conf/recipe/imagenet/paper.yaml").read_text())
    images = paper["train"]["steps"] * paper["train"]["batch_size"] * 8  # 8 replicas, README
    rows = nets["eager"]["bn_inception"] + nets["compiled"].get("bn_inception", []) + (
        [nets["cudagraphs"]] if "cudagraphs" in nets else [])
    b32 = max((r for r in rows if r["batch"] == 32), key=lambda r: r["images_s"], default=None)
    out = {"images": images, "assumed_images_s": paper["scale"]["images_per_gpu_s"],
           "assumed_hours": images / paper["scale"]["images_per_gpu_s"] / 3600}
    if b32:
        out |= {"measured_images_s": b32["images_s"], "measured_compile": b32["compile"],
                "measured_hours": images / b32["images_s"] / 3600}
    return out


# ----------------------------------------------------------------------------------------------


def environment(device) -> dict:
    import torchvision

    gpu = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.machine()}, dry run)",
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if gpu else None,
            "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if gpu else None,
            "cpu_cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if gpu else None,
            "git_commit": os.environ.get("GPU_CHECK_COMMIT") or rundir.git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def card_slug(device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-dry-run"
    return "-".join(name.lower().replace("nvidia", "nvidia ").split())[:40]


def load(path: Path) -> dict:
    """gpu_check.json, with the rows of a compile-only rerun on the same machine (compiled.json beside
    it, {"compiled": {...}, "skipped": [...]}) in place of the ones the budget skipped, and the raw results
    of earlier runs of the check on this card (their own folders beside it, under `earlier`)."""
    result = json.loads(path.read_text())
    if "shapes" not in result and path.with_name("shapes.json").exists():  # computed on a CPU afterwards
        result["shapes"] = json.loads(path.with_name("shapes.json").read_text())
    extra = path.with_name("compiled.json")
    if extra.exists() and "eager" in result.get("networks", {}):
        more, nets = json.loads(extra.read_text()), result["networks"]
        nets["compiled"] |= more["compiled"]
        if more.get("cudagraphs"):
            nets["cudagraphs"] = more["cudagraphs"]
        nets["skipped"] = [s for s in nets["skipped"] if not s.startswith("compile ")] + more["skipped"]
        nets["compiled_separately"] = True
        result["hours"] = hours(nets) | {k: v for k, v in result.get("hours", {}).items() if k.startswith("assumed")}
    result["earlier"] = [json.loads(p.read_text()) for p in sorted(path.parent.glob("*/gpu_check.json"))]
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "results/gpu")))
    p.add_argument("--budget", type=float, default=540,
                   help="seconds the check may take: no compilation starts in its last 100")
    p.add_argument("--render", type=Path, help="only render report.md from this gpu_check.json")
    p.add_argument("--shapes", type=Path, help="only write the networks' per-image counts (CPU) to this file")
    args = p.parse_args()
    if args.shapes:
        files.write_json(args.shapes, shapes(Sizes()))
        return 0
    if args.render:
        (args.render.parent / "report.md").write_text(render(load(args.render)))
        return 0
    cpu = os.environ.get("GPU_CHECK_CPU") == "1"
    if not cpu and not torch.cuda.is_available():
        print("error: no CUDA GPU visible: run on a GPU machine, or GPU_CHECK_CPU=1 for the CPU dry run",
              file=sys.stderr)
        return 2
    sz = CPU_SIZES if cpu else Sizes()
    device = torch.device("cpu" if cpu else "cuda")
    torch.manual_seed(0)
    t_start = time.time()
    out_dir = args.out / card_slug(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # generated data and scratch runs, removed at the end
    result = {"sizes": asdict(sz), "env": environment(device), "seconds": {}}

    def section(name, fn, *a):
        log(f"{name} ...")
        t0 = time.time()
        try:
            result[name] = fn(*a)
        except Exception as e:  # report what broke and go on to the next section
            import traceback

            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            log(f"{name} FAILED: {type(e).__name__}: {e}")
        result["seconds"][name] = round(time.time() - t0, 1)
        files.write_json(out_dir / "gpu_check.json", result)  # what is done so far survives a timeout

    fmnist = gpu_pipeline.fashion_mnist(tmp)
    folder = gpu_pipeline.make_folder(tmp / "folder", fmnist, sz)
    result["folder"] = folder
    section("shapes", shapes, sz)
    section("networks", networks, sz, device)
    section("pipeline", gpu_pipeline.pipeline, sz, device, Path(folder["root"]))
    section("runner", gpu_runner.runner, sz, device, Path(fmnist["dir"]), tmp)
    section("resume", gpu_pipeline.resume, sz, device, Path(folder["root"]), tmp)
    if "error" not in result["networks"]:  # last: compiling is the slowest part, and optional
        log("compile ...")
        compiled(result["networks"], sz, device, t_start + args.budget - 100,
                 lambda: files.write_json(out_dir / "gpu_check.json", result))
        result["hours"] = hours(result["networks"])
    result["seconds"]["total"] = round(time.time() - t_start, 1)
    files.write_json(out_dir / "gpu_check.json", result)
    (out_dir / "report.md").write_text(render(result))
    log(f"wrote {out_dir}/report.md and gpu_check.json in {result['seconds']['total']:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(isinstance(v, dict) and "error" in v for v in result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
