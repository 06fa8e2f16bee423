"""Benchmark: each metric on one 193 x 229 x 193 case (SegMaST in-house MS volume size) on CPU.

Builds a reference mask with realistic MS-like lesions (ellipsoids from 3 to ~3000 mm^3, most small) and a
prediction that shifts, shrinks, drops and adds lesions; then times every metric (median of ``--repeats``
runs) and, where MONAI is installed, MONAI's Dice and HD95 side by side. Target: well under 1 s per metric.

    python benchmarks/bench_metrics.py [--repeats 5] [--lesions 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from longiseg_bench import positive_int, print_header

from longiseg.metrics.lesion import label_lesions, lesion_detection
from longiseg.metrics.longitudinal import evaluate_mask_pair
from longiseg.metrics.stratified import stratified_lesion_metrics
from longiseg.metrics.voxel import dice, hd95, ppv, sensitivity

SHAPE = (193, 229, 193)


def make_case(n_lesions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference and predicted masks ``(193, 229, 193)`` with ``n_lesions`` ellipsoidal lesions."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, bool)
    pred = np.zeros(SHAPE, bool)
    for _ in range(n_lesions):
        radii = np.exp(rng.normal(1.0, 0.6, 3)).clip(0.7, 9.0)  # log-normal sizes: many small lesions
        c = rng.uniform([40, 40, 40], [153, 189, 153])
        lo = np.floor(c - radii - 3).astype(int)
        hi = np.ceil(c + radii + 4).astype(int)
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        ell = ((z - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((x - c[2]) / radii[2]) ** 2 <= 1
        gt[sl] |= ell
        u = rng.random()
        if u < 0.15:
            continue  # missed lesion
        shift = rng.normal(0, 0.7, 3)
        scale = rng.uniform(0.7, 1.2)
        cp = c + shift
        pe = ((z - cp[0]) / (radii[0] * scale)) ** 2 + ((y - cp[1]) / (radii[1] * scale)) ** 2 + (
            (x - cp[2]) / (radii[2] * scale)
        ) ** 2 <= 1
        pred[sl] |= pe
    for _ in range(n_lesions // 5):  # false positives
        c = rng.integers([40, 40, 40], [153, 189, 153])
        r = int(rng.integers(1, 3))
        pred[c[0] - r : c[0] + r + 1, c[1] - r : c[1] + r + 1, c[2] - r : c[2] + r + 1] = True
    return gt, pred


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=positive_int, default=5, help="timed runs per metric (median shown)")
    ap.add_argument("--lesions", type=positive_int, default=60, help="reference lesions of the synthetic case")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (MONAI runs through torch)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_header("cpu", {"numpy": np.__version__})
    gt, pred = make_case(args.lesions)
    sp = (1.0, 1.0, 1.0)
    lab = label_lesions(gt)
    print(
        f"case {SHAPE}: {lab.n} reference lesions ({gt.sum()} voxels, median "
        f"{np.median(lab.volumes_mm3):.0f} mm^3), prediction {pred.sum()} voxels; "
        f"median of {args.repeats} runs"
    )
    det = lesion_detection(pred, gt, sp, min_volume_mm3=11)
    benches: list[tuple[str, Callable[[], object]]] = [
        ("dice", lambda: dice(pred, gt)),
        ("dice (uint8 input, validated)", lambda: dice(pred.view(np.uint8), gt.view(np.uint8))),
        ("voxel ppv", lambda: ppv(pred, gt)),
        ("voxel sensitivity", lambda: sensitivity(pred, gt)),
        ("hd95", lambda: hd95(pred, gt, sp)),
        ("label_lesions (cc3d, 26-conn)", lambda: label_lesions(gt, sp)),
        ("label_lesions + 11 mm^3 filter", lambda: label_lesions(gt, sp, min_volume_mm3=11)),
        ("lesion F1, iou (TDW/LongiSeg)", lambda: lesion_detection(pred, gt, sp, min_volume_mm3=11)),
        (
            "lesion F1, iou_global",
            lambda: lesion_detection(pred, gt, sp, min_volume_mm3=11, rule="iou_global"),
        ),
        ("lesion F1, overlap", lambda: lesion_detection(pred, gt, sp, min_volume_mm3=11, rule="overlap")),
        ("size-stratified F1/Dice (tertiles)", lambda: stratified_lesion_metrics([det], "tertiles")),
        ("all metrics of one mask (segmast)", lambda: evaluate_mask_pair(pred, gt, sp, "segmast")),
    ]
    rows = [(name, median_time(fn, args.repeats)) for name, fn in benches]
    try:
        from monai.metrics import compute_dice, compute_hausdorff_distance

        yp = torch.from_numpy(pred)[None, None].float()
        yg = torch.from_numpy(gt)[None, None].float()
        rows.append(("MONAI compute_dice", median_time(lambda: compute_dice(yp, yg), args.repeats)))
        rows.append(
            (
                "MONAI compute_hausdorff_distance p95",
                median_time(
                    lambda: compute_hausdorff_distance(
                        yp, yg, include_background=True, percentile=95, spacing=sp
                    ),
                    args.repeats,
                ),
            )
        )
        ours = hd95(pred, gt, sp)
        theirs = float(compute_hausdorff_distance(yp, yg, include_background=True, percentile=95, spacing=sp))
        print(f"hd95 ours {ours:.4f} mm vs MONAI {theirs:.4f} mm")
    except ImportError:
        print("MONAI not installed: no side-by-side timing")
    width = max(len(n) for n, _ in rows)
    print(f"{'metric'.ljust(width)}  median [ms]")
    for name, t in rows:
        print(f"{name.ljust(width)}  {1000 * t:10.1f}")
    by = dict(rows)
    if "MONAI compute_hausdorff_distance p95" in by:
        print(
            f"hd95 speed ratio MONAI / ours: {by['MONAI compute_hausdorff_distance p95'] / by['hd95']:.1f}x"
        )
    print(f"lesion F1 (iou, >= 11 mm^3): {det.f1:.3f}  (n_gt {det.n_gt}, n_pred {det.n_pred})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
