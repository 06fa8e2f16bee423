"""Model-level benchmark: training-step throughput, peak memory and full-case inference time, normalised to SegMaST.

Models: the 2.5D ``segmast_ms``, ``segformer_ms`` (~9M, like the paper's SegFormer), ``dynunet_2d_ms`` and the 3D
``dynunet_3d_ms``, ``swin_unetr_3d_ms``, ``longi_unet_dw_ms``. One training step = forward, the imbalance-aware
Dice-Focal loss, backward and AdamW; steps of all models are timed interleaved (medians). The ratio column is the
time per training sample divided by SegMaST's, the step-level counterpart of the paper's "training ratio" (which is
wall-clock time per fold and therefore also reflects epochs and early stopping). 2.5D and 3D samples differ in size,
so the Mvox/s column (input voxels per second) is the fairer cross-dimension comparison.

Sizes (the paper: 2.5D 128x128 slices, batch 32; 3D 128^3 patches, batch 8):

* ``--paper``: exactly the paper's sizes (for a GPU).
* default (CPU report): 2.5D 128x128, batch 4; 3D 64^3, batch 1; inference case at 2 mm (98x116x94), 2.5D patch 128,
  3D window 64.
* ``--quick`` (CI): the three 2.5D models only (a 3D training step at 64^3, the smallest size all 3D models accept,
  takes 10-40 s on 2 CPU cores), 64x64 slices, batch 2; inference of ``segmast_ms`` on the case at 4 mm
  (49x58x47) with patch 64. Pass ``--models`` to add 3D models (trained at 64^3 in this mode).

Usage::

    python benchmarks/bench_models.py --quick
    python benchmarks/bench_models.py
    python benchmarks/bench_models.py --paper --device cuda
"""

from __future__ import annotations

import argparse

MODELS_2D = ("segmast_ms", "segformer_ms", "dynunet_2d_ms")
MODELS_3D = ("dynunet_3d_ms", "swin_unetr_3d_ms", "longi_unet_dw_ms")

#: (patch_2d, batch_2d, patch_3d, batch_3d, inference spacing mm, inference patch_2d, inference window_3d)
PRESETS = {
    "quick": (64, 2, 64, 1, 4, 64, 64),
    "cpu": (128, 4, 64, 1, 2, 128, 64),
    "paper": (128, 32, 128, 8, 1, 128, 128),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small patches, for CI")
    mode.add_argument("--paper", action="store_true", help="the paper's patch sizes and batches (GPU)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="registry names (default: all six; quick: the 2.5D ones)")
    parser.add_argument("--patch-2d", type=int, default=None)
    parser.add_argument("--batch-2d", type=int, default=None)
    parser.add_argument("--patch-3d", type=int, default=None)
    parser.add_argument("--batch-3d", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model")
    parser.add_argument("--spacing", type=int, default=None, help="voxel size (mm) of the inference case")
    parser.add_argument("--inference-patch-2d", type=int, default=None, help="tri-planar patch side")
    parser.add_argument("--inference-window-3d", type=int, default=None, help="3D sliding-window side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-inference", action="store_true", help="skip the full-case inference timing")
    parser.add_argument("--inference-models", nargs="+", default=None,
                        help="models for the inference timing (default: quick: segmast_ms; else all benchmarked)")
    args = parser.parse_args(argv)

    import torch

    from longiseg.benchmarking import run_inference_benchmark, run_model_benchmark

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = PRESETS["quick" if args.quick else "paper" if args.paper else "cpu"]
    models = args.models or list(MODELS_2D if args.quick else MODELS_2D + MODELS_3D)
    p2, b2, p3, b3, spacing, ip2, ip3 = preset
    run_model_benchmark(
        models,
        patch_2d=args.patch_2d or p2,
        batch_2d=args.batch_2d or b2,
        patch_3d=args.patch_3d or p3,
        batch_3d=args.batch_3d or b3,
        repeats=args.repeats,
        reference="segmast_ms" if "segmast_ms" in models else models[0],
        device=args.device,
        measure_memory=not args.no_memory,
    )
    if not args.no_inference:
        inference_models = args.inference_models or (["segmast_ms"] if args.quick else models)
        run_inference_benchmark(
            inference_models,
            spacing=args.spacing or spacing,
            patch_2d=args.inference_patch_2d or ip2,
            patch_3d=args.inference_window_3d or ip3,
            device=args.device,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
