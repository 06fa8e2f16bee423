"""Time and peak memory of tri-planar inference of one synthetic case, with and without empty-region skipping.

Default: one 193x229x193 two-timepoint case (the MS volumes of the SegMaST paper) with ``segmast_ms`` at patch
size 128, 50 % overlap, all three planes. Target on a 2-core CPU: under 3 minutes and under 4 GB per case.

Every configuration runs in a fresh child process, so its peak resident memory (``ru_maxrss``) is its own;
the table shows the child's RSS before inference (Python + torch + model + case) and its peak.

Usage::

    python benchmarks/bench_triplanar.py                      # full case, CPU, 2 threads
    python benchmarks/bench_triplanar.py --anatomy mni152 --skip on --scan-backends numba chunked
    python benchmarks/bench_triplanar.py --quick              # small volume
    python benchmarks/bench_triplanar.py --model voxelwise    # the inferer's own time and memory
    python benchmarks/bench_triplanar.py --model segformer_ms --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from typing import Any

from longiseg_bench import (
    check_scan_environment,
    nonnegative_int,
    output_file,
    positive_int,
    print_header,
    select_device,
    torch_device,
    uses_selective_scan,
)


def _rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def brain_region(shape: tuple[int, int, int], anatomy: str):
    """Boolean brain region of the case: ``"ellipsoid"`` (~20 % of the box) or ``"mni152"`` (the MNI152 1 mm
    brain mask bundled with nilearn, centre-cropped/padded to ``shape``)."""
    import numpy as np

    if anatomy == "mni152":
        from nilearn.datasets import load_mni152_brain_mask

        from longiseg.data.crops import crop_window

        mask = np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
        # centred crop (or zero padding) to the requested box
        return crop_window(mask, [(have - want) // 2 for have, want in zip(mask.shape, shape)], shape, fill=False)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    radius = (0.70, 0.80, 0.70)
    return sum((g / r) ** 2 for g, r in zip(grids, radius)) <= 1.0


def synthetic_case(
    shape: tuple[int, int, int], timepoints: int, channels: int, seed: int = 0, anatomy: str = "ellipsoid"
):
    """A brain-like case ``(T, C, D, H, W)``: noise inside the brain region, zero outside."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inside = brain_region(shape, anatomy)
    img = rng.standard_normal(size=(timepoints, channels, *shape), dtype=np.float32)
    img *= 0.2
    img += 0.5
    img *= inside
    return img, float(inside.mean())


def _build(name: str, kwargs: dict[str, Any]):
    """A registry model, or (``"voxelwise"``) a parameter-free model that isolates the inferer's own cost."""
    import torch
    import torch.nn as nn

    from longiseg import build_model
    from longiseg.networks.output import LongitudinalOutput

    class VoxelwiseModel(nn.Module):
        in_channels = 2

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> LongitudinalOutput:
            return LongitudinalOutput(self.scale * x[:, 0, :1], x[:, 1:, :1] - x[:, :1, :1])

    return VoxelwiseModel() if name == "voxelwise" else build_model(name, **kwargs)


def _worker(cfg: dict[str, Any], queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    select_device(cfg["device"])  # synchronisation and memory statistics below measure this GPU
    if cfg["scan_backend"]:
        os.environ["LONGISEG_SCAN_BACKEND"] = cfg["scan_backend"]
    from longiseg.inferers import TriplanarInferer
    from longiseg.ssm import resolve_backend

    try:
        model = _build(cfg["model"], cfg["model_kwargs"])
        model.eval().to(cfg["device"])
        channels = cfg["channels"] or getattr(model, "in_channels", 1)
        img, brain_fraction = synthetic_case(
            tuple(cfg["shape"]), cfg["timepoints"], channels, anatomy=cfg["anatomy"]
        )
        inferer = TriplanarInferer(
            patch_size=cfg["patch_size"],
            overlap=0.5,
            batch_size=cfg["batch_size"],
            skip_empty=cfg["skip_empty"],
            crop_to_brain=cfg["crop_to_brain"],
            device=cfg["device"],
            amp=True,
            progress=cfg["progress"],
        )
        # untimed warm-up forward pass (one-off kernel selection, lazy initialisation, allocator growth)
        t0 = time.perf_counter()
        with torch.no_grad():
            p = cfg["patch_size"]
            model(torch.zeros(1, cfg["timepoints"], channels, p, p, device=cfg["device"]))
        warmup = time.perf_counter() - t0
        rss_before = _current_rss_mb()
        if cfg["device"].startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(cfg["repeats"]):
            if cfg["device"].startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            base, prog = inferer(model, img)
            if cfg["device"].startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        gpu_peak = (torch.cuda.max_memory_allocated() / 2**20) if cfg["device"].startswith("cuda") else None
        try:
            scan_backend = resolve_backend(None, torch.device(cfg["device"]))
        except (ValueError, RuntimeError):  # one that cannot run here, for a model without a scan (voxelwise)
            scan_backend = "-"
        stats = inferer.last_stats
        queue.put(
            {
                "ok": True,
                "times": times,
                "warmup_s": warmup,
                "rss_before_mb": rss_before,
                "rss_peak_mb": _rss_mb(),
                "gpu_peak_mb": gpu_peak,
                "scan_backend": scan_backend,
                "computed": sum(s["computed"] for s in stats.values()),
                "skipped": sum(s["skipped"] for s in stats.values()),
                "brain_fraction": brain_fraction,
                "channels": channels,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "out_shapes": [list(base.shape), list(prog.shape)],
            }
        )
    except Exception as err:  # report the failure to the parent instead of hanging it
        queue.put({"ok": False, "error": f"{type(err).__name__}: {err}"})


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh spawned process and return its measurements."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(cfg, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="segmast_ms",
        help="registry name of a 2.5D model, or 'voxelwise' (no network: the inferer's own cost)",
    )
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict passed to build_model")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small 20x24x20 volume, patch 32 (about a minute with segmast_ms)",
    )
    parser.add_argument("--shape", type=positive_int, nargs=3, default=None, help="volume D H W (default 193 229 193)")
    parser.add_argument("--patch-size", type=positive_int, default=None, help="in-plane patch (default 128; quick 32)")
    parser.add_argument("--timepoints", type=positive_int, default=2)
    parser.add_argument(
        "--anatomy",
        choices=("ellipsoid", "mni152"),
        default="ellipsoid",
        help="brain region of the synthetic case (mni152 needs nilearn: the template's 1 mm brain mask)",
    )
    parser.add_argument("--channels", type=nonnegative_int, default=0, help="image channels (default: model.in_channels)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=1, help="timed runs per configuration (median shown)")
    parser.add_argument("--device", type=torch_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--scan-backends",
        nargs="+",
        default=[None],
        metavar="BACKEND",
        help="selective-scan backends to compare (e.g. numba chunked); default: LONGISEG_SCAN_BACKEND, else auto",
    )
    parser.add_argument(
        "--skip",
        choices=("both", "on", "off"),
        default="both",
        help="empty-region skipping configurations to run",
    )
    parser.add_argument(
        "--windows",
        choices=("brain", "slice", "both"),
        default="brain",
        help="window placement: over each slice's brain bounding box (default), the whole slice, or both",
    )
    parser.add_argument("--progress", action="store_true", help="show the tqdm bar")
    parser.add_argument("--json", type=output_file, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from longiseg.registry import is_model, model_info

    if args.model != "voxelwise":  # before any case is made: a 3D model fails only at its first window
        if not is_model(args.model):
            parser.error(f"argument --model: unknown model {args.model!r} (see longiseg models)")
        if model_info(args.model).dim == "3D":
            parser.error(f"argument --model: {args.model} is a 3D model; tri-planar inference runs 2.5D models "
                         "(3D models: bench_models.py times their sliding-window inference)")
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except ValueError as err:
        parser.error(f"argument --model-kwargs: not a JSON object: {err}")
    if not isinstance(model_kwargs, dict):
        parser.error(f"argument --model-kwargs: expected a JSON object, got {args.model_kwargs!r}")
    if args.model != "voxelwise":  # arguments the model refuses: said now, not by every configuration's process
        from longiseg import build_model

        try:
            build_model(args.model, **model_kwargs)
        except (TypeError, ValueError) as err:
            parser.error(f"argument --model-kwargs: {str(err).splitlines()[0]}")

    from longiseg.ssm import resolve_backend

    for backend in args.scan_backends:  # unknown or unavailable here: said now, not by every configuration's process
        if backend is None:
            check_scan_environment(parser, args.device,
                                   needed=args.model != "voxelwise" and uses_selective_scan([args.model]))
            continue
        try:
            resolve_backend(backend, args.device)
        except (ValueError, RuntimeError) as err:
            parser.error(f"argument --scan-backends: {err}")

    shape = args.shape or ([20, 24, 20] if args.quick else [193, 229, 193])
    patch = args.patch_size or (32 if args.quick else 128)
    skips = {"both": [True, False], "on": [True], "off": [False]}[args.skip]
    crops = {"both": [True, False], "brain": [True], "slice": [False]}[args.windows]
    base_cfg = {
        "model": args.model,
        "model_kwargs": model_kwargs,
        "shape": shape,
        "patch_size": patch,
        "timepoints": args.timepoints,
        "channels": args.channels,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "device": args.device,
        "progress": args.progress,
        "anatomy": args.anatomy,
    }
    explicit = [b for b in args.scan_backends if b is not None]
    info = print_header(args.device, {
        **({"scan_backends": f"{', '.join(explicit)} (one table row each)"} if explicit else {}),
        "threads": f"{args.threads} (each configuration's process)",
        "benchmark": f"tri-planar inference of {args.model}, T={args.timepoints} x {'x'.join(map(str, shape))}, "
                     f"patch {patch}, overlap 0.5, axial+coronal+sagittal, batch {args.batch_size}, "
                     f"repeats {args.repeats}",
    })
    rows = []
    configs = [(b, c, k) for b in args.scan_backends for c in crops for k in skips]
    for backend, crop, skip in configs:
        res = run_config({**base_cfg, "skip_empty": skip, "crop_to_brain": crop, "scan_backend": backend})
        res["skip_empty"], res["crop_to_brain"] = skip, crop
        rows.append(res)
        if not res["ok"]:
            print(f"scan={backend or 'auto'} crop_to_brain={crop} skip_empty={skip}: FAILED: {res['error']}")
    ok = [r for r in rows if r["ok"]]
    if ok:
        r0 = ok[0]
        print(
            f"params: {r0['params_m']:.2f} M | channels: {r0['channels']} | "
            f"brain fraction of the box: {r0['brain_fraction']:.1%}"
        )
        header = (
            f"{'scan':>9} | {'windows':>7} | {'skip_empty':>10} | {'patches run':>11} | {'skipped':>7} | "
            f"{'median s':>8} | {'min s':>7} | {'patches/s':>9} | {'warm-up s':>9} | {'RSS before MB':>13} | "
            f"{'peak RSS MB':>11} | {'GPU peak MB':>11}"
        )
        print(header)
        print("-" * len(header))
        for r in ok:
            gpu = f"{r['gpu_peak_mb']:.0f}" if r["gpu_peak_mb"] is not None else "-"
            med = statistics.median(r["times"])
            print(
                f"{r['scan_backend']:>9} | {'brain' if r['crop_to_brain'] else 'slice':>7} | "
                f"{str(r['skip_empty']):>10} | {r['computed']:>11} | {r['skipped']:>7} | {med:>8.1f} | "
                f"{min(r['times']):>7.1f} | {r['computed'] / med:>9.1f} | {r['warmup_s']:>9.1f} | "
                f"{r['rss_before_mb']:>13.0f} | {r['rss_peak_mb']:>11.0f} | {gpu:>11}"
            )
        base = ok[0]
        for r in ok[1:]:
            ratio = statistics.median(r["times"]) / statistics.median(base["times"])
            print(
                f"time ratio ({r['scan_backend']}, {'brain' if r['crop_to_brain'] else 'slice'}, "
                f"skip={r['skip_empty']}) / first row: {ratio:.2f}x"
            )
    if args.json:
        from longiseg.utils.io import atomic_write_json

        # the image channels the runs used (--channels 0 means the model's own in_channels)
        config = {**base_cfg, "channels": ok[0]["channels"] if ok else args.channels or None}
        atomic_write_json(args.json, {"environment": info, "config": config, "results": rows})
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
