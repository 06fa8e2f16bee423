"""Ablation: what makes SegMaST tell new lesions from old ones (issue 17, item 2).

One demo cohort (``--num-patients`` patients, ``--num-test`` held out, half progressing; ``--cohort-set`` changes
the generator's settings for an independent cohort), then for every variant and training seed the public stages,
exactly as ``longiseg train/tune/predict/evaluate`` run them:

1. train the variant's model with the demo's configuration (:func:`~longiseg.workflows.demo.demo_experiment`)
   plus the variant's overrides (skipped when the run folder holds ``trained.json``);
2. tune the progression threshold on the run's validation patients (``last.pt``) under each post-processing
   rule, the default (``outside``: progression cut to the outside of the predicted baseline lesions,
   ``inference.progression_outside_baseline=true``) last, so the checkpoint ends with it;
3. predict the held-out test patients under each rule (the default into ``predictions/``, the other into
   ``predictions_head/``);
4. evaluate them (the paper table's columns with the pooled persisting-lesion false-progression rate) under
   each rule at its tuned threshold and at a fixed 0.5 (the fixed-threshold masks re-made from the saved
   probability maps as predict makes them), and measure baseline reliance
   (:func:`~longiseg.workflows.diagnostics.baseline_reliance`) on the same patients.

Variants (the paper's recipe is the default; every lever is an optional setting of the library):

* ``paper``: the demo's SegMaST recipe as it is;
* ``hardneg``: ``data.persisting_share`` of the lesion-centred crops centred on persisting baseline lesions,
  kept by the loss (``loss.keep_hard_negatives``) instead of being dropped with the other empty samples;
* ``indep``: augmentation drawn independently per timepoint (``data.augment_independent_timepoints``);
* ``both``: the two together;
* ``dw``: SegMaST with Difference Weighting before every MaST mixer (``difference_weighting=True``);
* ``joint``: the progression loss on ``p_prog (1 - p_base)``, what inference thresholds
  (``loss.progression_outside_baseline``);
* ``segformer``: the demo's SegFormer, the paper's strongest 2.5D baseline, with the paper recipe.

Post-processing rules: ``head`` (the progression head's mask as it is, longiseg 0.2) and ``outside`` (the
default since 0.3). Every run writes ``OUT/runs/VARIANT/seedS/result.json``; a run with that file is skipped,
so the script can be stopped and started again. ``OUT/settings.json`` records the settings that made the cohort
and the runs (``--num-patients``, ``--num-test``, ``--cohort-seed``, ``--cohort-set``, ``--register``,
``--epochs``, ``--steps``); a rerun with other settings is refused (naming them) before anything is written:
use another OUT (or delete it) to start afresh. More ``--seeds`` or ``--variants`` are fine. The tables (mean (SD) over the seeds that finished) go to
``OUT/ablation.md`` and stdout. Runs use one torch thread and no DataLoader worker each, ``--jobs`` at a time.

Examples (the tables in docs/reproducing.md)::

    python examples/ablation_new_vs_old.py ablation_out --seeds 0 1 2 --jobs 2
    python examples/ablation_new_vs_old.py ablation_cohort2 --variants paper segformer --cohort-seed 7 \
        --cohort-set baseline_lesions=[3,12] new_lesions=[1,3] enlarging_lesions=[1,3] shrinking_lesions=[0,2] \
        lesion_radius_mm=[2.0,7.0] new_lesion_radius_mm=[2.5,5.0] enlarge_factor=[1.3,1.7] \
        max_translation=1.0 max_rotation=1.0 bias_strength=0.25 noise_level=0.04
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

#: Variant name -> (demo model label, dotted overrides of the demo's experiment config).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "paper": ("SegMaST", []),
    "hardneg": ("SegMaST", ["data.persisting_share=0.3", "loss.keep_hard_negatives=true"]),
    "indep": ("SegMaST", ["data.augment_independent_timepoints=true"]),
    "both": ("SegMaST", ["data.persisting_share=0.3", "loss.keep_hard_negatives=true",
                         "data.augment_independent_timepoints=true"]),
    "dw": ("SegMaST", ["model.kwargs.difference_weighting=true"]),
    "joint": ("SegMaST", ["loss.progression_outside_baseline=true"]),
    "segformer": ("SegFormer", []),
}

#: Post-processing rule -> ``inference.progression_outside_baseline``; the default rule last.
RULES: dict[str, bool] = {"head": False, "outside": True}
#: Thresholds each rule is evaluated at: the one tuned on the run's validation patients, and 0.5.
THRESHOLDS: tuple[str, ...] = ("tuned", "fixed")
FIXED_THRESHOLD = 0.5

#: (key in result.json below RULE/THRESHOLD/, column header) of the tables, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("dice/B", "Dice B"),
    ("dice/P", "Dice P"),
    ("dice/NP", "Dice NP"),
    ("lesion_f1/P", "F1 P"),
    ("lesion_ppv/P", "PPV P"),
    ("daa/all", "DAA (%)"),
    ("persisting_fp/all", "Old-as-new (%)"),
)
#: Columns of the baseline-reliance diagnostic (the probabilities, independent of the rule).
RELIANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("reliance/new/drop", "new: drop"),
    ("reliance/persisting/p_real", "persisting: p_real"),
)

RESULT_FILE = "result.json"
TRAINED_FILE = "trained.json"
SETTINGS_FILE = "settings.json"
#: settings.json key -> the option that sets it
SETTING_FLAGS: dict[str, str] = {
    "num_patients": "--num-patients", "num_test": "--num-test", "cohort_seed": "--cohort-seed",
    "cohort_set": "--cohort-set", "register": "--register", "epochs": "--epochs", "steps_per_epoch": "--steps",
}


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What ``OUT/settings.json`` records: the options that made the cohort and the runs' training."""
    return {"num_patients": args.num_patients, "num_test": args.num_test, "cohort_seed": args.cohort_seed,
            "cohort_set": list(args.cohort_set), "register": args.register, "epochs": args.epochs,
            "steps_per_epoch": args.steps}


def settings_conflict(out: Path, settings: dict[str, Any]) -> str | None:
    """Why ``out`` cannot be continued with ``settings`` (``None`` when it can): it was made with other settings,
    or holds a cohort or runs of unknown settings (no ``settings.json``)."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        if any((out / name).exists() for name in ("train", "test", "runs")):
            return (f"{out} holds a cohort or runs but no {SETTINGS_FILE} (the settings that made them are unknown); "
                    "choose another OUT, or delete it to start afresh")
        return None
    old = json.loads(path.read_text())
    changed = [f"{SETTING_FLAGS.get(k, k)} {old.get(k)!r} -> {settings.get(k)!r}"
               for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if not changed:
        return None
    return (f"{out} was made with other settings ({', '.join(changed)}); rerun with its settings, or choose "
            "another OUT (or delete it) to start afresh")


def make_cohort(out: Path, num_patients: int, num_test: int, seed: int = 0, overrides: Sequence[str] = (),
                register: bool = False) -> None:
    """``longiseg cohort OUT --num-patients N --num-test K --seed S --set ...`` (skipped when ``OUT/test`` exists);
    with ``register``, ``longiseg register OUT/cohort OUT/cohort_registered --progression-space baseline`` in
    between (the generator's progression masks lie in baseline space), and the split is made from its output."""
    from longiseg.data.demo_cohort import generate_demo_cohort
    from longiseg.data.split import write_test_split
    from longiseg.workflows.demo import DemoConfig, demo_cohort_config

    if (out / "test").is_dir() and (out / "train").is_dir():
        return
    cfg = DemoConfig(output_dir=str(out), num_patients=num_patients, num_test=num_test, seed=seed)
    cohort = generate_demo_cohort(out / "cohort", demo_cohort_config(cfg).with_overrides(overrides), overwrite=True)
    if register:
        from longiseg.registration.cohort import RegistrationOptions, register_folder

        results = register_folder(cohort, out / "cohort_registered", RegistrationOptions(
            progression_space="baseline", qc_figures=False), overwrite=True)
        failed = [r.case_id for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"registration failed for {failed}; see {out / 'cohort_registered' / 'registration.csv'}")
        cohort = out / "cohort_registered"
    write_test_split(cohort, out, cfg.num_test, overwrite=True)


def _train(root: Path, run_dir: Path, variant: str, seed: int, epochs: int, steps: int) -> None:
    """``longiseg train`` of one (variant, seed) unless ``run_dir`` holds a finished run."""
    from longiseg.utils.io import atomic_write_json
    from longiseg.workflows.demo import DemoConfig, demo_experiment
    from longiseg.workflows.train import run_training

    marker = run_dir / TRAINED_FILE
    if marker.is_file() and json.loads(marker.read_text()) == {"epochs": epochs, "steps_per_epoch": steps}:
        return
    if run_dir.exists():  # an unfinished run: start it again from scratch
        shutil.rmtree(run_dir)
    label, overrides = VARIANTS[variant]
    cfg = DemoConfig(output_dir=str(root), seed=seed, epochs=epochs, steps_per_epoch=steps, num_workers=0,
                     progress=False)
    run_training(demo_experiment(cfg, label, root / "train", run_dir).with_overrides(overrides))
    atomic_write_json(marker, {"epochs": epochs, "steps_per_epoch": steps})


def _remake_masks(pred_dir: Path, test_dir: Path, out_dir: Path, threshold: float, outside: bool,
                  inference: dict[str, Any]) -> None:
    """Masks of every case of ``pred_dir`` at ``threshold``, from its saved probability maps, as predict makes
    them (under the ``outside`` rule the saved progression maps already are ``p_prog (1 - p_base)``)."""
    from longiseg.data.cohort import find_cases
    from longiseg.data.loading import load_case
    from longiseg.data.predictions import read_prediction, save_prediction
    from longiseg.inferers.postprocessing import postprocess

    restrict = inference.get("restrict", "progression")
    pp = {"threshold": threshold, "min_volume_mm3": float(inference.get("min_lesion_mm3", 0.0))}
    for source in find_cases(test_dir):
        case = load_case(source)
        probs, affine, spacing = read_prediction(pred_dir, source.case_id, case.num_timepoints, kind="prob")
        brain = case.brain_mask.astype(bool)
        base = postprocess(probs[0], spacing=spacing, brain_mask=brain if restrict == "both" else None, **pp)
        prog = postprocess(probs[1:], spacing=spacing, brain_mask=None if restrict == "none" else brain,
                           exclude=base if outside else None, **pp)
        save_prediction(out_dir, source.case_id, affine, {"mask": [base, *prog]}, overwrite=True)


def run_one(out: str, variant: str, seed: int, epochs: int, steps: int) -> dict[str, Any]:
    """Train (unless trained), tune, predict, evaluate and measure baseline reliance of one (variant, seed);
    returns the record also written to ``OUT/runs/VARIANT/seedS/result.json``."""
    import torch

    torch.set_num_threads(1)
    from longiseg.data.cohort import find_cases
    from longiseg.data.loading import load_case
    from longiseg.data.preprocessing import preprocess_case
    from longiseg.engine.checkpoint import load_model, update_spec
    from longiseg.metrics.evaluate import evaluate_folder
    from longiseg.utils.io import atomic_write_json
    from longiseg.workflows.config import InferenceConfig
    from longiseg.workflows.diagnostics import baseline_reliance
    from longiseg.workflows.predict import run_prediction
    from longiseg.workflows.tune import TUNING_FILE, run_tuning

    root = Path(out)
    run_dir = root / "runs" / variant / f"seed{seed}"
    _train(root, run_dir, variant, seed, epochs, steps)  # longiseg train
    ckpt = run_dir / "last.pt"
    record: dict[str, Any] = {}
    for rule, outside in RULES.items():  # longiseg tune, under each rule (the default last)
        spec = load_model(ckpt).spec
        update_spec(ckpt, spec.replace(inference={  # every tuning starts from 0.5 for both heads
            **spec.inference, "progression_outside_baseline": outside, "threshold": FIXED_THRESHOLD,
            "progression_threshold": None}))
        run_tuning(run_dir, checkpoint="last.pt", device="cpu", progress=False)
        shutil.copyfile(run_dir / TUNING_FILE, run_dir / f"tuning_{rule}.json")
        record[f"{rule}/threshold"] = json.loads((run_dir / TUNING_FILE).read_text())["threshold"]
    model = load_model(ckpt)
    pred_dirs = {rule: run_dir / ("predictions" if outside else f"predictions_{rule}") for rule, outside in RULES.items()}
    for rule, outside in RULES.items():  # longiseg predict (--set inference.progression_threshold=... for the other rule)
        cfg = InferenceConfig.from_dict({**model.spec.inference, "progression_outside_baseline": outside,
                                         "progression_threshold": record[f"{rule}/threshold"]})
        run_prediction(model, root / "test", pred_dirs[rule], cfg, device="cpu", overwrite=True, progress=False)
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        for rule, outside in RULES.items():
            for kind in THRESHOLDS:
                masks = pred_dirs[rule]  # at the tuned threshold: what longiseg predict wrote
                if kind == "fixed":
                    masks = Path(tmp) / f"{rule}_{kind}"
                    _remake_masks(pred_dirs[rule], root / "test", masks, FIXED_THRESHOLD, outside,
                                  model.spec.inference)
                result = evaluate_folder(masks, root / "test", model=f"{variant}/seed{seed}", progress=False)
                record.update({f"{rule}/{kind}/{k}": s.mean for k, s in result.table.paper_summary().items()})
    lesions = [les for source in find_cases(root / "test")
               for les in baseline_reliance(model, preprocess_case(load_case(source)), device="cpu").lesions]
    for kind in ("new", "persisting"):
        rows = [les for les in lesions if les.kind == kind]
        record[f"reliance/{kind}/count"] = len(rows)
        record[f"reliance/{kind}/p_real"] = float(np.mean([r.p_real for r in rows])) if rows else math.nan
        record[f"reliance/{kind}/drop"] = float(np.mean([r.drop for r in rows])) if rows else math.nan
    label, overrides = VARIANTS[variant]
    record.update(variant=variant, model=label, seed=seed, overrides=overrides, epochs=epochs, steps_per_epoch=steps)
    if (root / SETTINGS_FILE).is_file():  # the cohort's settings too
        record["settings"] = json.loads((root / SETTINGS_FILE).read_text())
    atomic_write_json(run_dir / RESULT_FILE, record)
    return record


def _cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    vals = [v * scale for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ({np.std(vals, ddof=1):.{digits}f})"


def ablation_table(out: Path, threshold: str = "tuned") -> str:
    """Markdown table: per variant with finished runs and per rule, the mean (SD over seeds, ``ddof=1``) of the
    columns at ``threshold`` (``"tuned"``: each run's validation-tuned threshold, listed; ``"fixed"``: 0.5),
    with the baseline-reliance columns."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    header = ("| variant | rule | seeds | threshold | " + " | ".join(h for _, h in COLUMNS) + " | "
              + " | ".join(h for _, h in RELIANCE_COLUMNS) + " |")
    lines = [header, "|" + "---|" * (len(COLUMNS) + len(RELIANCE_COLUMNS) + 4)]
    for variant in VARIANTS:
        records = [json.loads(p.read_text()) for p in sorted((out / "runs" / variant).glob(f"seed*/{RESULT_FILE}"))]
        if not records:
            continue
        seeds = ",".join(str(r["seed"]) for r in records)
        for rule in reversed(RULES):  # the default rule first
            thresholds = ("/".join(f"{r[f'{rule}/threshold']:.2f}" for r in records) if threshold == "tuned"
                          else f"{FIXED_THRESHOLD:.2f}")
            cells = [_cell([r[f"{rule}/{threshold}/{k}"] for r in records], digits=1 if k.endswith("all") else 3)
                     for k, _ in COLUMNS]
            cells += [_cell([r[k] for r in records]) for k, _ in RELIANCE_COLUMNS]
            lines.append(f"| {variant} | {rule} | {seeds} | {thresholds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output", metavar="OUT", help="folder for the cohort, the runs and ablation.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (all variants of "
                   "the first seed run before the next seed)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--num-patients", type=int, default=32)
    p.add_argument("--num-test", type=int, default=10)
    p.add_argument("--cohort-seed", type=int, default=0, help="seed of the generated cohort")
    p.add_argument("--cohort-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="generator settings other than the demo's (as longiseg cohort --set)")
    p.add_argument("--register", action="store_true", help="register every follow-up to its baseline "
                                                           "(longiseg register) before the split")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per epoch (default: the demo's)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU core each)")
    args = p.parse_args(argv)
    from tqdm import tqdm

    from longiseg.utils.io import atomic_write_json
    from longiseg.workflows.demo import DemoConfig, demo_cohort_config

    args.epochs = DemoConfig.epochs if args.epochs is None else args.epochs
    args.steps = DemoConfig.steps_per_epoch if args.steps is None else args.steps
    # Every argument is checked before anything is written (the cohort alone takes a minute).
    for flag, value in (("--jobs", args.jobs), ("--epochs", args.epochs), ("--steps", args.steps)):
        if value < 1:
            p.error(f"argument {flag}: must be >= 1, got {value}")
    if min(args.seeds) < 0 or args.cohort_seed < 0:
        p.error(f"argument --seeds/--cohort-seed: seeds must be >= 0, got {args.seeds} and {args.cohort_seed}")
    out = Path(args.output)
    try:
        cfg = DemoConfig(output_dir=str(out), num_patients=args.num_patients, num_test=args.num_test)
    except ValueError as err:
        p.error(f"argument --num-patients/--num-test: {err}")
    try:
        demo_cohort_config(cfg).with_overrides(args.cohort_set)
    except ValueError as err:
        p.error(f"argument --cohort-set: {err}")
    if out.exists() and not out.is_dir():
        p.error(f"OUT {out} exists and is not a folder")
    settings = settings_of(args)
    conflict = settings_conflict(out, settings)
    if conflict:
        p.error(conflict)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        p.error(f"OUT {out} cannot be made: {err.strerror or err}")
    atomic_write_json(out / SETTINGS_FILE, settings)
    try:
        make_cohort(out, args.num_patients, args.num_test, args.cohort_seed, args.cohort_set, args.register)
    except (ValueError, RuntimeError) as err:  # e.g. too few progressing or stable patients for --num-test
        if not ((out / "train").is_dir() and (out / "test").is_dir()):  # no cohort: other settings may follow
            (out / SETTINGS_FILE).unlink(missing_ok=True)
        p.exit(2, f"{p.prog}: error: {err}\n")
    todo = [(v, s) for s in args.seeds for v in args.variants
            if not (out / "runs" / v / f"seed{s}" / RESULT_FILE).is_file()]
    with tqdm(total=len(todo), desc="ablation runs", unit="run") as bar, ProcessPoolExecutor(
            max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, str(out), v, s, args.epochs, args.steps): (v, s) for v, s in todo}
        for fut in as_completed(futures):
            v, s = futures[fut]
            rec = fut.result()
            bar.write(f"{v} seed {s} (outside, tuned): F1 P {rec['outside/tuned/lesion_f1/P']:.3f}, "
                      f"NP {rec['outside/tuned/dice/NP']:.3f}, DAA {rec['outside/tuned/daa/all']:.1f} %, "
                      f"old-as-new {rec['outside/tuned/persisting_fp/all']:.1f} %")
            bar.update()
    text = "\n\n".join(f"Thresholds: {kind}\n\n{ablation_table(out, kind)}" for kind in THRESHOLDS)
    (out / "ablation.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
