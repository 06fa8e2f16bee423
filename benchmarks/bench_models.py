"""Model-level benchmark: training-step throughput, peak memory and full-case inference time, normalised to SegMaST.

Models: the 2.5D ``segmast_ms``, ``segformer_ms`` (~9M, like the paper's SegFormer), ``dynunet_2d_ms`` and the 3D
``dynunet_3d_ms``, ``swin_unetr_3d_ms``, ``longi_unet_dw_ms``. One training step = forward, the imbalance-aware
Dice-Focal loss, backward and the trainer's AdamW (``build_optimizer``); steps of all models are timed interleaved
(medians). The ratio column is the time per training sample divided by SegMaST's, the step-level counterpart of the
paper's "training ratio" (which is wall-clock time per fold and therefore also reflects epochs and early stopping).
2.5D and 3D samples differ in size, so the Mvox/s column (input voxels per second) is the fairer cross-dimension comparison.
The matmul columns count the dense matrix-product FLOPs of one step (``longiseg_bench.flops``, one extra step per model;
``--no-flops`` skips it): where products run near the processor's peak, their ratio is a floor for the time ratio.

Sizes (the paper: 2.5D 128x128 slices, batch 32; 3D 128^3 patches, batch 8):

* ``--paper``: exactly the paper's sizes (for a GPU).
* default (CPU report): 2.5D 128x128, batch 4; 3D 64^3, batch 1; inference case at 2 mm (98x116x94), 2.5D patch 128,
  3D window 64.
* ``--quick`` (CI): the three 2.5D models only (a 3D training step at 64^3, the smallest size all 3D models accept,
  takes 10-40 s on 2 CPU cores), 64x64 slices, batch 2; inference of ``segmast_ms`` on the case at 4 mm
  (49x58x47) with patch 64. Pass ``--models`` to add 3D models (trained at 64^3 in this mode).
* ``--models demo:SegMaST demo:SegFormer --batch-2d 8``: the demo's two models (the same widths and depths) at the
  demo's batch; with ``--quick`` at its 64x64 crops.

Usage::

    python benchmarks/bench_models.py --quick
    python benchmarks/bench_models.py
    python benchmarks/bench_models.py --paper --device cuda
    python benchmarks/bench_models.py --quick --models demo:SegMaST demo:SegFormer --batch-2d 8 --no-inference
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from longiseg_bench import (
    check_scan_environment,
    format_bytes,
    format_table,
    matrix_product_flops,
    peak_memory,
    positive_int,
    print_header,
    select_device,
    time_interleaved,
    torch_device,
    uses_selective_scan,
)
from tqdm.auto import tqdm

from longiseg.registry import model_info
from longiseg.utils.validation import check_positive_int

MODELS_2D = ("segmast_ms", "segformer_ms", "dynunet_2d_ms")
MODELS_3D = ("dynunet_3d_ms", "swin_unetr_3d_ms", "longi_unet_dw_ms")

#: (patch_2d, batch_2d, patch_3d, batch_3d, inference spacing mm, inference patch_2d, inference window_3d)
PRESETS = {
    "quick": (64, 2, 64, 1, 4, 64, 64),
    "cpu": (128, 4, 64, 1, 2, 128, 64),
    "paper": (128, 32, 128, 8, 1, 128, 128),
}


@dataclass
class ModelRecord:
    """Training-step measurement of one model.

    Attributes:
        model: registry name.
        dim: ``"2.5D"`` or ``"3D"``.
        input_shape: ``(B, T, C, *S)`` of one step.
        params: parameter count.
        times: seconds per training step (timed blocks of all rounds).
        peak_bytes: peak memory of one step (``None``: not measured).
        matmul_flops: FLOPs of the dense matrix products of one step (``longiseg_bench.flops``).
        error: set when the model failed to build or run.
    """

    model: str
    dim: str
    input_shape: tuple[int, ...]
    params: int = 0
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    matmul_flops: float | None = None
    error: str = ""

    @property
    def median(self) -> float | None:
        """Median step time in seconds, ``None`` when not measured."""
        return statistics.median(self.times) if self.times else None

    @property
    def samples_per_second(self) -> float | None:
        """Batch size / median step time."""
        return self.input_shape[0] / self.median if self.times else None

    @property
    def voxels_per_second(self) -> float | None:
        """Input voxels per second (batch * prod(S) * T / median step time), comparable across 2.5D and 3D."""
        if not self.times:
            return None
        return math.prod(self.input_shape[:2]) * math.prod(self.input_shape[3:]) / self.median


def model_batch(
    model: nn.Module, batch: int, patch: Sequence[int], timepoints: int = 2, device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random training batch for ``model``: images ``(B, T, C, *S)`` and binary targets.

    ``C`` is ``model.in_channels`` (1 if absent); the baseline target is ``(B, 1, *S)`` and the progression
    target ``(B, T-1, 1, *S)``, about 5 % foreground each; the first half of the batch has empty progression
    targets, as in the balanced sampling of the paper.

    Raises:
        ValueError: for a bad batch, patch or timepoint count.
    """
    check_positive_int("batch", batch)
    check_positive_int("timepoints", timepoints, minimum=2)
    if len(patch) not in (2, 3):
        raise ValueError(f"patch must be (H, W) or (D, H, W), got {tuple(patch)}")
    for p in patch:
        check_positive_int("patch[i]", p)
    channels = int(getattr(model, "in_channels", 1))
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, timepoints, channels, *patch, generator=gen)
    base = (torch.rand(batch, 1, *patch, generator=gen) < 0.05).float()
    prog = (torch.rand(batch, timepoints - 1, 1, *patch, generator=gen) < 0.05).float()
    prog[: batch // 2] = 0
    return images.to(device), base.to(device), prog.to(device)


def _training_step(model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> Callable[[], None]:
    from longiseg.engine import TrainerConfig, build_optimizer
    from longiseg.losses import ImbalanceAwareLoss

    loss_fn = ImbalanceAwareLoss(seed=0)
    optimizer = build_optimizer(model, TrainerConfig(lr=1e-4, weight_decay=0.05))  # the trainer's AdamW
    images, base, prog = batch
    use_amp = device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(images)
        loss = loss_fn(out.map(lambda t: t.float()), base, prog).loss
        loss.backward()
        optimizer.step()

    return step


DEMO_PREFIX = "demo:"
"""Model names ``demo:SegMaST`` and ``demo:SegFormer`` are the demo's small configurations
(:data:`longiseg.workflows.demo.DEMO_MODELS`: the same widths and depths for both)."""


def _check_model_names(models: Sequence[str]) -> None:
    from longiseg.registry import list_models
    from longiseg.workflows.demo import DEMO_MODELS

    if not models:
        raise ValueError("models must name at least one registry model")
    demo_names = [DEMO_PREFIX + label for label in DEMO_MODELS]
    known = set(list_models()) | set(demo_names)
    for name in models:
        if name not in known:
            raise ValueError(f"unknown model {name!r}; see longiseg.list_models(), or one of {demo_names}")


def registry_name(name: str) -> str:
    """The registry model of a benchmark model name (``demo:<label>`` names the demo's configuration of one)."""
    from longiseg.workflows.demo import DEMO_MODELS

    return DEMO_MODELS[name[len(DEMO_PREFIX):]][0] if name.startswith(DEMO_PREFIX) else name


def build_benchmark_model(name: str) -> tuple[nn.Module, str]:
    """A registry model, or a demo configuration (``demo:<label>``), and its ``"2.5D"``/``"3D"`` kind."""
    from longiseg.registry import build_model
    from longiseg.workflows.demo import DEMO_MODELS

    _check_model_names([name])
    if name.startswith(DEMO_PREFIX):
        registry_name, kwargs = DEMO_MODELS[name[len(DEMO_PREFIX):]]
        return build_model(registry_name, **kwargs), model_info(registry_name).dim
    return build_model(name), model_info(name).dim


def run_model_benchmark(
    models: Sequence[str],
    patch_2d: int,
    batch_2d: int,
    patch_3d: int,
    batch_3d: int,
    *,
    timepoints: int = 2,
    rounds: int = 3,
    min_run_time: float = 0.2,
    reference: str = "segmast_ms",
    device: torch.device | str = "cpu",
    measure_memory: bool = True,
    count_flops: bool = True,
    progress: bool = True,
) -> list[ModelRecord]:
    """Training-step throughput and peak memory of registry models, interleaved; prints the table.

    One step = forward, ``ImbalanceAwareLoss`` (the paper's loss), backward, AdamW (lr 1e-4, weight decay 0.05).
    2.5D models get ``(batch_2d, T, C, patch_2d, patch_2d)``, 3D models ``(batch_3d, T, C, patch_3d, patch_3d,
    patch_3d)``. CUDA steps run under bfloat16 autocast. Every model first takes one untimed step (it creates
    the optimizer state, and a model that fails at this size is reported instead of stopping the run); then
    the steps are timed in interleaved rounds (``longiseg_bench.timing``).

    Args:
        models: registry names.
        patch_2d: slice patch side of the 2.5D models.
        batch_2d: batch of the 2.5D models.
        patch_3d: cube side of the 3D models.
        batch_3d: batch of the 3D models.
        timepoints: ``T``.
        rounds: interleaved timing rounds.
        min_run_time: seconds of timed steps per model and round.
        reference: model the ratio column is normalised to (time per sample of model / of reference, the
            paper's "training ratio" at the step level); must be in ``models``.
        device: ``"cpu"`` or a CUDA device.
        measure_memory: also measure the peak memory of one step.
        count_flops: also count the matrix-product FLOPs of one step (one extra step per model).
        progress: tqdm bars.

    Returns:
        One :class:`ModelRecord` per model, in the order given.

    Raises:
        ValueError: empty ``models``, ``reference`` not among them, or unknown names.
    """
    _check_model_names(models)
    if reference not in models:
        raise ValueError(f"reference {reference!r} must be one of the benchmarked models {list(models)}")
    device = torch.device(device)
    print_header(
        device,
        {
            "benchmark": "training step = forward + ImbalanceAwareLoss + backward + AdamW",
            "config": f"2.5D: batch {batch_2d} x {patch_2d}^2 | 3D: batch {batch_3d} x {patch_3d}^3 | "
            f"T={timepoints} | {rounds} interleaved rounds of >= {min_run_time} s",
        },
    )
    records: list[ModelRecord] = []
    steps: dict[str, Callable[[], None]] = {}
    for name in tqdm(models, desc="build + first step", unit="model", disable=not progress):
        rec = ModelRecord(name, "-", ())
        try:
            model, dim = build_benchmark_model(name)
            rec.dim = dim
            patch = (patch_3d,) * 3 if dim == "3D" else (patch_2d,) * 2
            bsz = batch_3d if dim == "3D" else batch_2d
            model = model.to(device).train()
            channels = int(getattr(model, "in_channels", 1))
            rec.params = sum(p.numel() for p in model.parameters())
            rec.input_shape = (bsz, timepoints, channels, *patch)
            step = _training_step(model, model_batch(model, bsz, patch, timepoints, device), device)
            step()
            if count_flops:
                rec.matmul_flops = matrix_product_flops(step)
            steps[name] = step
        except Exception as err:  # report and go on: one broken model must not hide the others
            rec.error = f"{type(err).__name__}: {err}"
        records.append(rec)
    measured = time_interleaved(steps, rounds, min_run_time, label="training step", progress=progress) if steps else {}
    by_name = {r.model: r for r in records}
    for name, m in measured.items():
        by_name[name].times = m.times
        if measure_memory:
            by_name[name].peak_bytes = peak_memory(steps[name], device)
    _print_model_table(records, reference)
    return records


def _print_model_table(records: Sequence[ModelRecord], reference: str) -> None:
    ref = next(r for r in records if r.model == reference)
    ref_per_sample = ref.median / ref.input_shape[0] if ref.times else None
    ref_flops_per_sample = ref.matmul_flops / ref.input_shape[0] if ref.matmul_flops else None
    rows = []
    for r in records:
        if r.error:
            rows.append([r.model, r.dim, "-", "-", "-", "error", "-", "-", "-", "-", "-"])
            continue
        per_sample = r.median / r.input_shape[0]
        flops_per_sample = r.matmul_flops / r.input_shape[0] if r.matmul_flops is not None else None
        rows.append([
            r.model, r.dim, "x".join(map(str, r.input_shape)), f"{r.params / 1e6:.2f}",
            None if r.matmul_flops is None else r.matmul_flops / 1e9, r.median,
            r.samples_per_second, r.voxels_per_second / 1e6 if r.voxels_per_second else None,
            per_sample / ref_per_sample if ref_per_sample else None,
            flops_per_sample / ref_flops_per_sample if ref_flops_per_sample and flops_per_sample is not None else None,
            format_bytes(r.peak_bytes),
        ])
    columns = ["model", "dim", "input (B,T,C,*S)", "params M", "matmul GFLOP", "step s", "samples/s", "Mvox/s",
               f"time/sample vs {reference}", f"matmul FLOP/sample vs {reference}", "peak MiB"]
    print("\ntraining step (median of the timed steps)")
    print(format_table(columns, rows))
    for r in records:
        if r.error:
            print(f"error: {r.model}: {r.error}")


def run_inference_benchmark(
    models: Sequence[str],
    spacing: int,
    patch_2d: int,
    patch_3d: int,
    *,
    batch_2d: int = 32,
    rounds: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Inference time of one synthetic demo case per model; prints the table.

    The case is ``generate_demo_case(0)`` at ``spacing`` mm (2: 98x116x94 voxels, 4: 49x58x47; T=2, FLAIR + T2).
    2.5D models run ``TriplanarInferer`` (all three planes, 50 % overlap, empty patches skipped, ``batch_2d``
    patches per pass); 3D models ``SlidingWindowInferer3D`` (50 % overlap, one window per pass). Models are
    untrained; only time matters. Each round is one untimed and one timed inference (``longiseg_bench.timing``
    with ``min_run_time=0``), so lazy initialisation and compilation are not counted.

    Returns:
        One dict per model: ``model``, ``dim``, ``patch``, ``times`` (seconds), ``patches`` (tri-planar patches
        computed), ``shape`` of the case.

    Raises:
        ValueError: unknown model names or bad sizes.
    """
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.inferers import SlidingWindowInferer3D, TriplanarInferer

    check_positive_int("spacing", spacing)
    check_positive_int("patch_2d", patch_2d)
    check_positive_int("patch_3d", patch_3d)
    check_positive_int("rounds", rounds)
    _check_model_names(models)
    device = torch.device(device)
    case, _ = generate_demo_case(0, DemoCohortConfig(spacing=spacing))
    images = torch.as_tensor(case.images)
    shape = tuple(images.shape)
    print(f"\ninference of one case {'x'.join(map(str, shape))} (T, C, D, H, W) at {spacing} mm, overlap 0.5")
    results = []
    for name in tqdm(models, desc="inference", unit="model", disable=not progress):
        model, dim = build_benchmark_model(name)
        model = model.to(device).eval()
        if dim == "3D":
            inferer: Any = SlidingWindowInferer3D(roi_size=patch_3d, overlap=0.5, batch_size=1, device=device,
                                                  progress=False)
            patch = f"{patch_3d}^3"
        else:
            inferer = TriplanarInferer(patch_size=patch_2d, overlap=0.5, batch_size=batch_2d, device=device,
                                       progress=False)
            patch = f"{patch_2d}^2"
        def infer(inferer: Any = inferer, model: nn.Module = model) -> None:
            inferer(model, images, case.brain_mask)

        measured = time_interleaved({name: infer}, rounds, min_run_time=0.0, label="inference")
        patches = sum(s["computed"] for s in getattr(inferer, "last_stats", {}).values()) or None
        results.append({"model": name, "dim": dim, "patch": patch, "times": measured[name].times,
                        "patches": patches, "shape": shape})
    rows = [[r["model"], r["dim"], r["patch"], r["patches"], statistics.median(r["times"])] for r in results]
    print(format_table(["model", "dim", "patch", "2.5D patches run", "case s (median)"], rows))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small patches, for CI")
    mode.add_argument("--paper", action="store_true", help="the paper's patch sizes and batches (GPU)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="registry names, or demo:SegMaST / demo:SegFormer (the demo's configurations; "
                        "default: all six registry models; quick: the 2.5D ones)")
    parser.add_argument("--patch-2d", type=positive_int, default=None)
    parser.add_argument("--batch-2d", type=positive_int, default=None)
    parser.add_argument("--patch-3d", type=positive_int, default=None)
    parser.add_argument("--batch-3d", type=positive_int, default=None)
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=positive_int, default=3,
                        help="interleaved timing rounds (default 3)")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds of timed steps per model and round (default 0.2)")
    parser.add_argument("--spacing", type=positive_int, default=None, help="voxel size (mm) of the inference case")
    parser.add_argument("--inference-patch-2d", type=positive_int, default=None, help="tri-planar patch side")
    parser.add_argument("--inference-window-3d", type=positive_int, default=None, help="3D sliding-window side")
    parser.add_argument("--device", type=torch_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-flops", action="store_true", help="skip counting the matrix-product FLOPs")
    parser.add_argument("--no-inference", action="store_true", help="skip the full-case inference timing")
    parser.add_argument("--inference-models", nargs="+", default=None,
                        help="models for the inference timing (default: quick: segmast_ms; else all benchmarked)")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = PRESETS["quick" if args.quick else "paper" if args.paper else "cpu"]
    models = args.models or list(MODELS_2D if args.quick else MODELS_2D + MODELS_3D)
    try:  # before any model is timed
        _check_model_names([*models, *(args.inference_models or [])])
    except ValueError as err:
        parser.error(f"argument --models/--inference-models: {err}")
    check_scan_environment(parser, args.device, needed=uses_selective_scan(
        registry_name(name) for name in [*models, *(args.inference_models or [])]))
    select_device(args.device)
    p2, b2, p3, b3, spacing, ip2, ip3 = preset
    run_model_benchmark(
        models,
        patch_2d=p2 if args.patch_2d is None else args.patch_2d,  # not `or`: a bad 0 is refused, not replaced
        batch_2d=b2 if args.batch_2d is None else args.batch_2d,
        patch_3d=p3 if args.patch_3d is None else args.patch_3d,
        batch_3d=b3 if args.batch_3d is None else args.batch_3d,
        rounds=args.rounds,
        min_run_time=args.min_run_time,
        reference="segmast_ms" if "segmast_ms" in models else models[0],
        device=args.device,
        measure_memory=not args.no_memory,
        count_flops=not args.no_flops,
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
