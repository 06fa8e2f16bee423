"""Ablation: which training lever makes SegMaST tell new lesions from old ones (issue 17, item 2).

One demo cohort (``--num-patients`` patients, ``--num-test`` held out, half progressing), then for every variant
and training seed the public stages, exactly as ``longiseg train/tune/predict/evaluate`` run them:

1. train SegMaST with the demo's configuration (:func:`~longiseg.workflows.demo.demo_experiment`) plus the
   variant's overrides;
2. tune the progression threshold on the run's validation patients (``last.pt``);
3. predict the held-out test patients;
4. evaluate them (the paper table's columns, with the pooled persisting-lesion false-progression rate) and
   measure baseline reliance (:func:`~longiseg.workflows.diagnostics.baseline_reliance`) on the same patients.

Variants (the paper's recipe is the default; every lever is an optional setting of the library):

* ``paper``: the demo's recipe as it is;
* ``hardneg``: ``data.persisting_share`` of the lesion-centred crops centred on persisting baseline lesions,
  kept by the loss (``loss.keep_hard_negatives``) instead of being dropped with the other empty samples;
* ``indep``: augmentation drawn independently per timepoint (``data.augment_independent_timepoints``);
* ``both``: the two together.

Every run writes ``OUT/runs/VARIANT/seedS/ablation.json``; a run with that file is skipped, so the script can be
stopped and started again. The table (mean (SD) over the seeds that finished) goes to ``OUT/ablation.md`` and
stdout. Runs use one torch thread and no DataLoader worker each, ``--jobs`` of them at a time.

Example (the table in docs/reproducing.md)::

    python examples/ablation_new_vs_old.py ablation_out --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

#: Variant name -> dotted overrides of the demo's SegMaST experiment config (applied per run).
VARIANTS: dict[str, list[str]] = {
    "paper": [],
    "hardneg": ["data.persisting_share=0.3", "loss.keep_hard_negatives=true"],
    "indep": ["data.augment_independent_timepoints=true"],
    "both": ["data.persisting_share=0.3", "loss.keep_hard_negatives=true",
             "data.augment_independent_timepoints=true"],
}

#: (key in ablation.json, column header) of the table, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("dice/B", "Dice B"),
    ("dice/P", "Dice P"),
    ("dice/NP", "Dice NP"),
    ("lesion_f1/P", "F1 P"),
    ("lesion_ppv/P", "PPV P"),
    ("daa/all", "DAA (%)"),
    ("persisting_fp/all", "Old-as-new (%)"),
    ("reliance/new/drop", "new: drop"),
    ("reliance/persisting/p_real", "persisting: p_real"),
)

RESULT_FILE = "ablation.json"
#: The tuning record of every run (``longiseg tune``): the table shows each seed's chosen threshold.
TUNING_FILE = "tuning.json"


def make_cohort(out: Path, num_patients: int, num_test: int) -> None:
    """``longiseg cohort OUT --num-patients N --num-test K`` (skipped when ``OUT/test`` exists)."""
    from longiseg.data.demo_cohort import generate_demo_cohort
    from longiseg.data.split import write_test_split
    from longiseg.workflows.demo import DemoConfig, demo_cohort_config

    if (out / "test").is_dir() and (out / "train").is_dir():
        return
    cfg = DemoConfig(output_dir=str(out), num_patients=num_patients, num_test=num_test)
    cohort = generate_demo_cohort(out / "cohort", demo_cohort_config(cfg), overwrite=True)
    write_test_split(cohort, out, cfg.num_test, overwrite=True)


def run_one(out: str, variant: str, seed: int, epochs: int, steps: int) -> dict[str, Any]:
    """Train, tune, predict, evaluate and measure baseline reliance of one (variant, seed); returns the record
    also written to ``OUT/runs/VARIANT/seedS/ablation.json``."""
    import torch

    torch.set_num_threads(1)
    from longiseg.data.loading import find_cases, load_case
    from longiseg.data.preprocessing import preprocess_case
    from longiseg.engine.checkpoint import load_model
    from longiseg.metrics.evaluate import evaluate_folder
    from longiseg.utils.io import atomic_write_json
    from longiseg.workflows.demo import DemoConfig, demo_experiment
    from longiseg.workflows.diagnostics import baseline_reliance
    from longiseg.workflows.predict import run_prediction
    from longiseg.workflows.train import run_training
    from longiseg.workflows.tune import run_tuning

    root = Path(out)
    run_dir = root / "runs" / variant / f"seed{seed}"
    if run_dir.exists():  # an unfinished run (no ablation.json): start it again from scratch
        shutil.rmtree(run_dir)
    cfg = DemoConfig(output_dir=str(root), seed=seed, epochs=epochs, steps_per_epoch=steps, num_workers=0,
                     progress=False)
    exp = demo_experiment(cfg, "SegMaST", root / "train", run_dir).with_overrides(VARIANTS[variant])
    run_training(exp)  # longiseg train
    run_tuning(run_dir, checkpoint="last.pt", device="cpu", progress=False)  # longiseg tune
    model = load_model(run_dir / "last.pt")
    pred_dir = run_dir / "predictions"
    run_prediction(model, root / "test", pred_dir, device="cpu", overwrite=True, progress=False)  # longiseg predict
    result = evaluate_folder(pred_dir, root / "test", model=f"{variant}/seed{seed}", progress=False)  # evaluate
    record: dict[str, Any] = {k: s.mean for k, s in result.table.paper_summary().items()}
    lesions = [les for source in find_cases(root / "test")
               for les in baseline_reliance(model, preprocess_case(load_case(source)), device="cpu").lesions]
    for kind in ("new", "persisting"):
        rows = [les for les in lesions if les.kind == kind]
        record[f"reliance/{kind}/count"] = len(rows)
        record[f"reliance/{kind}/p_real"] = float(np.mean([r.p_real for r in rows])) if rows else math.nan
        record[f"reliance/{kind}/drop"] = float(np.mean([r.drop for r in rows])) if rows else math.nan
    record.update(variant=variant, seed=seed, overrides=VARIANTS[variant], epochs=epochs, steps_per_epoch=steps)
    atomic_write_json(run_dir / RESULT_FILE, record)
    return record


def _cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    vals = [v * scale for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ({np.std(vals, ddof=1):.{digits}f})"


def ablation_table(out: Path) -> str:
    """Markdown table of mean (SD over seeds, ``ddof=1``) of every variant with finished runs, with the
    progression threshold each seed's run chose on its validation patients."""
    header = "| variant | seeds | threshold | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for variant in VARIANTS:
        paths = sorted((out / "runs" / variant).glob(f"seed*/{RESULT_FILE}"))
        if not paths:
            continue
        records = [json.loads(p.read_text()) for p in paths]
        seeds = ",".join(str(r["seed"]) for r in records)
        tuned = [p.parent / TUNING_FILE for p in paths]
        thresholds = "/".join(f"{json.loads(t.read_text())['threshold']:.2f}" if t.is_file() else "-" for t in tuned)
        cells = [_cell([r[k] for r in records], digits=1 if k.endswith("all") else 3) for k, _ in COLUMNS]
        lines.append(f"| {variant} | {seeds} | {thresholds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output", metavar="OUT", help="folder for the cohort, the runs and ablation.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (all variants of "
                   "the first seed run before the next seed)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--num-patients", type=int, default=32)
    p.add_argument("--num-test", type=int, default=10)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--steps", type=int, default=25, help="optimizer steps per epoch")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU core each)")
    args = p.parse_args(argv)
    from tqdm import tqdm

    out = Path(args.output)
    make_cohort(out, args.num_patients, args.num_test)
    todo = [(v, s) for s in args.seeds for v in args.variants
            if not (out / "runs" / v / f"seed{s}" / RESULT_FILE).is_file()]
    with tqdm(total=len(todo), desc="ablation runs", unit="run") as bar, ProcessPoolExecutor(
            max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, str(out), v, s, args.epochs, args.steps): (v, s) for v, s in todo}
        for fut in as_completed(futures):
            v, s = futures[fut]
            rec = fut.result()
            bar.write(f"{v} seed {s}: F1 P {rec['lesion_f1/P']:.3f}, NP {rec['dice/NP']:.3f}, "
                      f"DAA {rec['daa/all']:.1f} %, old-as-new {rec['persisting_fp/all']:.1f} %")
            bar.update()
    table = ablation_table(out)
    (out / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
