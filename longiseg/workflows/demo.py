"""The library's main job: the whole pipeline on the embedded demo cohort, on a CPU, in minutes.

1. Build the demo cohort (MNI152 anatomy with synthetic MS-like lesions, 2 mm) in the library layout.
2. Hold out test patients (half progressing, half stable); train SegMaST and the SegFormer baseline briefly
   with the imbalance-aware loss and balanced batches.
3. Choose each model's progression threshold on its *validation* patients (the ones the trainer held out,
   never the test patients) by maximising their progression lesion F1 with
   :func:`~longiseg.inferers.thresholds.select_threshold`, as nnU-Net determines its post-processing.
4. Tri-planar inference on the held-out patients with each trained model (progression masks at the chosen
   threshold) and with an *untrained* SegMaST (the reference that shows what training achieved).
5. Evaluate with the SegMaST protocol, print the paper-style table and write ``results.json``, CSV files and
   figures: ``overlay.png`` (baseline/follow-up slices with true and predicted masks and the entropy map),
   ``boxplot.png`` (per-patient metrics), ``training_curves.png`` and ``cohort_patient.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_cohort, plot_case
from longiseg.data.layout import MANIFEST_JSON, prediction_filenames
from longiseg.data.loading import CaseSource, Manifest, find_cases, load_case, read_manifest, write_manifest
from longiseg.data.preprocessing import preprocess_case
from longiseg.engine.checkpoint import build_model_from_checkpoint
from longiseg.engine.config import TrainerConfig
from longiseg.inferers.postprocessing import postprocess
from longiseg.inferers.thresholds import ThresholdSelection, select_threshold
from longiseg.metrics.evaluate import evaluate_folder, write_report
from longiseg.registry import build_model
from longiseg.utils.io import atomic_path, atomic_save_nifti, atomic_write_json
from longiseg.utils.logging import get_logger
from longiseg.workflows.config import DataConfig, ExperimentConfig, InferenceConfig, LossConfig, ModelConfig
from longiseg.workflows.predict import run_prediction
from longiseg.workflows.train import run_training, split_by_patient

__all__ = ["DemoConfig", "DEMO_MODELS", "DEMO_COHORT_LESIONS", "run_demo"]

# Only folders holding this marker are ever deleted by ``overwrite=True``.
_MARKER = ".longiseg-demo"

logger = get_logger(__name__)

#: Small configurations of the two 2.5D models compared by the demo (registry name, factory kwargs).
DEMO_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "SegMaST": ("segmast", {"widths": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_dim": 64,
                            "drop_path_rate": 0.0}),
    "SegFormer": ("segformer", {"widths": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8],
                                "decoder_dim": 64,
                                "drop_path_rate": 0.0}),
}

#: Lesion activity of the demo cohort (overrides of :class:`~longiseg.data.demo_cohort.DemoCohortConfig`):
#: active follow-ups get 2-5 new lesions of 3-6 mm largest semi-axis and enlarging lesions grow their axes by
#: 40-80 %. At 2 mm voxels smaller new lesions are only a few voxels (below the 27 mm^3 post-processing
#: cut-off) and thinner growth rims break into fragments that no model can detect.
DEMO_COHORT_LESIONS: dict[str, Any] = {
    "new_lesions": (2, 5),
    "new_lesion_radius_mm": (3.0, 6.0),
    "enlarge_factor": (1.4, 1.8),
}


@dataclasses.dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (defaults: eight to ten minutes on a 2-core CPU).

    Attributes:
        output_dir: everything is written here (cohort, runs, predictions, report, figures).
        num_patients: cohort size (one two-timepoint case per patient).
        num_test: held-out test patients (half progressing).
        spacing: cohort voxel size in mm (2: 98x116x94 voxels).
        models: which of :data:`DEMO_MODELS` to train.
        epochs: training epochs per model.
        steps_per_epoch: optimizer steps per epoch.
        batch_size: slices per batch.
        crop_size: training crop and inference window in voxels.
        lr: peak learning rate (higher than the paper's 1e-4 because the demo trains for minutes, not days).
        lesion_weight: probability that a training crop is centred on a lesion voxel.
        progression_share: share of the lesion-centred crops of a progressing patient centred on its
            new/enlarging lesions (the rest on its baseline lesions).
        tune_threshold: choose each trained model's progression threshold on its validation patients
            (:func:`~longiseg.inferers.thresholds.select_threshold`); ``False`` keeps 0.5.
        seed: seed of the cohort, the split and training.
        threads: torch intra-op threads (and numba threads of the compiled scan). The default 1 leaves the
            second core of a small machine to the data worker; the small tensors of the demo gain little from
            more threads and lose a lot when the cores are shared.
        num_workers: DataLoader worker processes that sample and augment slices while the model trains.
        overwrite: replace an existing demo output folder (only one the demo wrote, recognised by its marker
            file; any other non-empty folder is never deleted).
        progress: progress bars.
    """

    output_dir: str = "demo_output"
    num_patients: int = 28
    num_test: int = 6
    spacing: int = 2
    models: tuple[str, ...] = ("SegMaST", "SegFormer")
    epochs: int = 24
    steps_per_epoch: int = 25
    batch_size: int = 8
    crop_size: int = 64
    lr: float = 2e-3
    lesion_weight: float = 0.8
    progression_share: float = 0.8
    tune_threshold: bool = True
    seed: int = 0
    threads: int = 1
    num_workers: int = 1
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        # Checked before anything is written: the cohort alone takes a minute to make.
        unknown = [m for m in self.models if m not in DEMO_MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be a non-empty subset of {list(DEMO_MODELS)}, got {list(self.models)}")
        for name, low in (("num_patients", 6), ("epochs", 1), ("steps_per_epoch", 1), ("batch_size", 2),
                          ("crop_size", 32), ("threads", 1), ("num_workers", 0), ("spacing", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32 (the models downsample 32x), got {self.crop_size}")
        if not 2 <= self.num_test < self.num_patients - 2:
            raise ValueError(f"num_test must be in [2, num_patients - 3] = [2, {self.num_patients - 3}], "
                             f"got {self.num_test}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("lesion_weight", "progression_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def _split_cohort(cohort: Path, train_dir: Path, test_dir: Path, num_test: int) -> list[str]:
    """Copy the cohort's case folders into ``train/`` and ``test/`` roots, each with its own manifest."""
    manifest = read_manifest(cohort / MANIFEST_JSON)
    prog = [e for e in manifest.cases if e.progression]
    stable = [e for e in manifest.cases if not e.progression]
    n_prog = num_test // 2
    test = prog[:n_prog] + stable[: num_test - n_prog]
    test_ids = {e.case_id for e in test}
    for root, entries in ((test_dir, test), (train_dir, [e for e in manifest.cases if e.case_id not in test_ids])):
        root.mkdir(parents=True, exist_ok=True)
        for e in entries:
            dst = root / e.case_id
            if not dst.exists():
                shutil.copytree(cohort / e.case_id, dst)
        write_manifest(root / MANIFEST_JSON, Manifest(manifest.modalities, tuple(entries)))
    return sorted(test_ids)


def _experiment(cfg: DemoConfig, label: str, train_dir: Path, run_dir: Path) -> ExperimentConfig:
    name, kwargs = DEMO_MODELS[label]
    return ExperimentConfig(
        model=ModelConfig(name=name, kwargs=dict(kwargs)),
        data=DataConfig(root=str(train_dir), val_fraction=0.25, crop_size=cfg.crop_size,
                        lesion_weight=cfg.lesion_weight, progression_share=cfg.progression_share,
                        samples_per_epoch=cfg.steps_per_epoch * cfg.batch_size, val_samples=48,
                        cache_size=cfg.num_patients, seed=cfg.seed),
        loss=LossConfig(strategy="partial", seed=cfg.seed),
        trainer=TrainerConfig(max_epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=cfg.lr / 20,
                              warmup_epochs=1, patience=None, seed=cfg.seed, output_dir=str(run_dir),
                              tensorboard=False, progress_bar=cfg.progress, device="cpu",
                              num_workers=cfg.num_workers),
        # As in the paper, inference windows have the training crop size: a Mamba scan trained on 64x64 crops
        # does not carry over to the 4x longer token sequences of 128x128 windows.
        inference=InferenceConfig(patch_size=cfg.crop_size, overlap=0.5, batch_size=32, min_lesion_mm3=27.0),
    )


def _prediction_brain(case: Any) -> np.ndarray:
    """The brain mask prediction restricts to: the case's mask, else its non-zero voxels. ``(D, H, W)`` bool."""
    if case.brain_mask is not None:
        return np.asarray(case.brain_mask, dtype=bool)
    return np.asarray(case.images != 0).any(axis=(0, 1))


def _progression_probabilities(pred_dir: Path, source: CaseSource) -> tuple[Any, list[np.ndarray], list[Any]]:
    """``(case, probability maps (D, H, W) per follow-up, their NIfTI images)`` of one predicted case."""
    import nibabel as nib

    case = preprocess_case(load_case(source))
    names = prediction_filenames(case.images.shape[0])["prob"][1:]
    imgs = [nib.load(pred_dir / source.case_id / name) for name in names]
    return case, [np.asarray(im.dataobj, dtype=np.float32) for im in imgs], imgs


def _choose_threshold(model: torch.nn.Module, exp: ExperimentConfig, val_dir: Path, progress: bool
                      ) -> ThresholdSelection | None:
    """Predict the trainer's validation patients and pick the progression threshold that serves them best.

    ``None`` (keep the default threshold) when no validation patient has new or enlarging lesions.
    """
    _, val_sources = split_by_patient(find_cases(Path(exp.data.root), modalities=exp.data.modalities),
                                      exp.data.val_fraction, exp.data.seed)
    if not val_sources:
        raise ValueError("tune_threshold needs validation patients (data.val_fraction > 0)")
    run_prediction(model, exp.model.name, exp.data.root, val_dir, exp.inference,
                   case_ids=[s.case_id for s in val_sources], device="cpu", progress=progress)
    probs: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    brains: list[np.ndarray | None] = []
    spacing: tuple[float, ...] = ()
    for src in val_sources:
        case, case_probs, _ = _progression_probabilities(val_dir, src)
        probs += case_probs
        refs += [np.asarray(m, dtype=bool) for m in case.progression_masks]
        brains += [_prediction_brain(case) if exp.inference.restrict != "none" else None] * len(case_probs)
        spacing = tuple(case.spacing)
    if not any(r.any() for r in refs):
        logger.warning("no validation patient has new lesions: keeping the progression threshold %.2f",
                       exp.inference.threshold)
        return None
    # Lesion F1 of the progressing validation patients: the strict NP score is all-or-nothing per patient, so
    # with the demo's few stable validation patients a single one would decide the threshold.
    return select_threshold(probs, refs, spacing, min_volume_mm3=exp.inference.min_lesion_mm3, brain_masks=brains,
                            protocol="segmast", default=exp.inference.threshold, objective="lesion_f1")


def _apply_threshold(pred_dir: Path, test_dir: Path, threshold: float, inference: InferenceConfig) -> None:
    """Rewrite the progression masks of ``pred_dir`` from its probability maps at ``threshold``.

    Post-processing is the prediction's (brain restriction, component removal); baseline masks are kept.
    """
    for src in find_cases(test_dir, require_masks=False):
        case, case_probs, imgs = _progression_probabilities(pred_dir, src)
        brain = _prediction_brain(case) if inference.restrict != "none" else None
        names = prediction_filenames(case.images.shape[0])["mask"][1:]
        for prob, img, name in zip(case_probs, imgs, names, strict=True):
            mask = postprocess(prob, threshold=threshold, min_volume_mm3=inference.min_lesion_mm3,
                               spacing=case.spacing, brain_mask=brain)
            atomic_save_nifti(mask.astype(np.uint8), img.affine, pred_dir / src.case_id / name, overwrite=True)


def _training_curves(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, run in runs.items():
        with open(run / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        ep = [int(r["epoch"]) for r in rows]
        axes[0].plot(ep, [float(r["train_loss"]) for r in rows], marker="o", label=label)
        if rows and "val_dice" in rows[0]:
            axes[1].plot(ep, [float(r["val_dice"]) for r in rows], marker="o", label=label)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="validation Dice (mean of B and P heads)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _overlay(test_dir: Path, pred_dirs: dict[str, Path], case_id: str, path: Path) -> None:
    """Axial slice through the largest new lesion: images with true (green) and predicted (red) masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    case = load_case(next(s for s in find_cases(test_dir) if s.case_id == case_id))
    prog = case.progression_masks[0]
    z = int(np.argmax(prog.sum(axis=(0, 1)))) if prog.any() else case.shape[2] // 2
    rot = lambda a: np.rot90(a[:, :, z])  # noqa: E731 - display in radiological orientation
    t0, t1 = case.images[0, 0], case.images[1, 0]
    n = len(pred_dirs)
    fig, axes = plt.subplots(n, 3, figsize=(10, 3.4 * n), squeeze=False)
    for row, (label, pdir) in enumerate(pred_dirs.items()):
        pred = {name: np.asarray(nib.load(pdir / case_id / name).dataobj)
                for name in ("baseline_mask.nii.gz", "progression_t1.nii.gz", "progression_t1_entropy.nii.gz")}
        panels = [
            (t0, case.baseline_mask, pred["baseline_mask.nii.gz"], f"{label}: baseline (t0)"),
            (t1, prog, pred["progression_t1.nii.gz"], f"{label}: new/enlarging (t1)"),
        ]
        for col, (img, gt, pr, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(rot(img), cmap="gray")
            if gt.any():
                ax.contour(rot(gt), levels=[0.5], colors="lime", linewidths=1.0)
            if pr.any():
                ax.contour(rot(pr), levels=[0.5], colors="red", linewidths=1.0)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ent = pred["progression_t1_entropy.nii.gz"]
        ax = axes[row, 2]
        im = ax.imshow(rot(ent), cmap="magma", vmin=0, vmax=float(np.log(2)))
        if prog.any():
            ax.contour(rot(prog), levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{label}: progression entropy (nats)", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{case_id}, axial slice {z}: ground truth green, prediction red", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo end to end and return the results (also written to ``output_dir/results.json``).

    Returns:
        ``{"table": str, "learned": {...}, "models": [...], "test_cases": [...], "thresholds": {...},
        "timings_s": {...}, "files": {...}, "config": {...}}``; ``models`` holds the paper-table rows (mean,
        SD, p-value per column), ``learned`` compares each trained model's held-out baseline Dice and
        progression lesion F1 with the untrained reference's, and ``thresholds`` holds each trained model's
        threshold selection on its validation patients (:meth:`ThresholdSelection.to_dict`) with the test
        progression lesion F1 and P/NP Dice it would have had at the default threshold (``test_at_default``;
        empty with ``tune_threshold=False``).
    """
    cfg = cfg or DemoConfig()
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (out / _MARKER).is_file():
            raise FileExistsError(f"{out} is not a folder written by the demo (no {_MARKER}); not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by longiseg demo; --overwrite may replace this folder\n")
    torch.manual_seed(cfg.seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    timings: dict[str, float] = {}

    t = time.perf_counter()
    cohort_cfg = DemoCohortConfig(num_patients=cfg.num_patients, spacing=cfg.spacing, seed=cfg.seed,
                                  **DEMO_COHORT_LESIONS)
    cohort = generate_demo_cohort(out / "cohort", cohort_cfg, progress=cfg.progress)
    test_ids = _split_cohort(cohort, out / "train", out / "test", cfg.num_test)
    # a progressing test patient, so that the figure shows new lesions
    shown = next((e.case_id for e in read_manifest(out / "test" / MANIFEST_JSON).cases if e.progression), test_ids[0])
    plot_case(out / "test" / shown, out / "cohort_patient.png")
    timings["cohort"] = time.perf_counter() - t

    runs: dict[str, Path] = {}
    pred_dirs: dict[str, Path] = {}
    results = []
    thresholds: dict[str, dict[str, Any]] = {}
    for label in cfg.models:
        exp = _experiment(cfg, label, out / "train", out / "runs" / label)
        t = time.perf_counter()
        run_training(exp)
        timings[f"train_{label}"] = time.perf_counter() - t
        runs[label] = out / "runs" / label
        model = build_model_from_checkpoint(runs[label] / "last.pt")
        selection = None
        if cfg.tune_threshold:
            t = time.perf_counter()
            selection = _choose_threshold(model, exp, out / "validation" / label, cfg.progress)
            timings[f"validate_{label}"] = time.perf_counter() - t
        if selection is not None:
            logger.info("%s: progression threshold %.2f chosen on %d validation follow-ups (%s %.3f, %.3f at %.2f)",
                        label, selection.threshold, selection.num_progression + selection.num_stable,
                        selection.objective, selection.score, selection.default_score, selection.default)
        t = time.perf_counter()
        pred_dirs[label] = out / "predictions" / label
        run_prediction(model, exp.model.name, out / "test", pred_dirs[label], exp.inference,
                       device="cpu", progress=cfg.progress)
        if selection is not None:
            # Recorded for transparency: the test result at the default threshold, before the chosen one applies.
            at_default = evaluate_folder(pred_dirs[label], out / "test", model=label, progress=False)
            thresholds[label] = {**selection.to_dict(), "test_at_default": {
                f"{metric}/{kind}": at_default.table.summary(metric, kind=kind).mean
                for metric, kind in (("lesion_f1", "P"), ("dice", "P"), ("dice", "NP"))}}
            if selection.threshold != exp.inference.threshold:
                _apply_threshold(pred_dirs[label], out / "test", selection.threshold, exp.inference)
        timings[f"predict_{label}"] = time.perf_counter() - t
        results.append(evaluate_folder(pred_dirs[label], out / "test", model=label, progress=False))

    # The untrained reference: same architecture as the first model, random weights.
    label0 = cfg.models[0]
    name0, kw0 = DEMO_MODELS[label0]
    untrained = f"{label0} (untrained)"
    exp0 = _experiment(cfg, label0, out / "train", out / "runs" / label0)
    torch.manual_seed(cfg.seed)
    model = build_model(name0, in_channels=2, num_timepoints=2, **kw0)
    t = time.perf_counter()
    pred_dirs[untrained] = out / "predictions" / "untrained"
    run_prediction(model, name0, out / "test", pred_dirs[untrained], exp0.inference, device="cpu",
                   progress=cfg.progress)
    timings["predict_untrained"] = time.perf_counter() - t
    results.append(evaluate_folder(pred_dirs[untrained], out / "test", model=untrained, progress=False))

    table = write_report(results, out / "report", reference=label0)
    _training_curves(runs, out / "training_curves.png")
    prog_case = next(e.case_id for e in read_manifest(out / "test" / MANIFEST_JSON).cases if e.progression)
    _overlay(out / "test", pred_dirs, prog_case, out / "overlay.png")

    rows = {r["model"]: r for r in json.loads((out / "report" / "summary.json").read_text())["models"]}
    learned = {
        label: {key: {"trained": rows[label][f"{key}/mean"], "untrained": rows[untrained][f"{key}/mean"]}
                for key in ("dice/B", "lesion_f1/P")}
        for label in cfg.models
    }
    summary = {
        "table": table,
        "learned": learned,
        "models": list(rows.values()),
        "test_cases": test_ids,
        "thresholds": thresholds,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "files": {
            "report": str(out / "report"),
            "overlay": str(out / "overlay.png"),
            "boxplot": str(out / "report" / "boxplot.png"),
            "training_curves": str(out / "training_curves.png"),
            "cohort_patient": str(out / "cohort_patient.png"),
        },
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_json(out / "results.json", summary)
    return summary
