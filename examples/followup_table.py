"""Per-follow-up results of a multi-timepoint model (SegMaST paper, section 4.3 and Fig. 4).

Evaluates a prediction folder against its reference folder and splits the follow-up rows by follow-up
(FU1, FU2, ...) and by progression (P) / no progression (NP): Dice and lesion F1 as mean (SD) over patients.
Writes ``followups.csv``, the usual report of ``longiseg evaluate`` (``table.txt``, ``summary.csv``, ...)
and ``entropy.png``: for the test case with the largest last-follow-up progression, the FLAIR image and the
predicted progression entropy of every follow-up with the reference contours (as Fig. 4).

Usage::

    python examples/followup_table.py PRED_DIR GT_DIR --out REPORT_DIR [--protocol segmast]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from longiseg.data.case import plane_axes
from longiseg.data.layout import image_filename, progression_filename
from longiseg.metrics import EvaluationResult, MetricSummary, evaluate_folder, write_csv, write_report
from longiseg.metrics.report import format_summary


def followup_summaries(result: EvaluationResult, metrics: Sequence[str] = ("dice", "lesion_f1")
                       ) -> list[tuple[str, str, MetricSummary]]:
    """``(metric, column, summary)`` for B, then ``FU{i} P`` and ``FU{i} NP`` of every follow-up ``i``.

    NP columns are given for Dice only (the strict NP score); lesion metrics have no NP column. Each summary is the mean (SD) over patients (:meth:`ResultsTable.summary`); NaN where a column is empty.
    """
    table = result.table
    followups = sorted({int(r["timepoint"]) for r in table.rows if int(r["timepoint"]) > 0})
    out = []
    for metric in metrics:
        columns = [("B", table.select(kind="B"))]
        for fu in followups:
            sub = table.select(timepoint=fu)
            columns.append((f"FU{fu} P", sub.select(kind="P")))
            if metric == "dice":  # lesion metrics are undefined without reference lesions (paper: "-")
                columns.append((f"FU{fu} NP", sub.select(kind="NP")))
        for name, sub in columns:
            out.append((metric, name, sub.summary(metric)))
    return out


def format_followup_table(summaries: list[tuple[str, str, MetricSummary]]) -> str:
    """The summaries as a text table: one row per metric, one column per B / FU P / FU NP."""
    columns = list(dict.fromkeys(c for _, c, _ in summaries))
    lines = [f"{'metric':<10}" + "".join(f"{c:>16}" for c in columns)]
    for metric in dict.fromkeys(m for m, _, _ in summaries):
        cells = {c: s for m, c, s in summaries if m == metric}
        text = [format_summary(cells[c], metric) if c in cells else "-" for c in columns]
        lines.append(f"{metric:<10}" + "".join(f"{t:>16}" for t in text))
    return "\n".join(lines)


def entropy_figure(pred_dir: Path, gt_dir: Path, out_png: Path) -> Path | None:
    """FLAIR and progression entropy of every follow-up of one case, reference contours in green.

    The case with the largest reference progression at its last follow-up is shown, on the axial slice
    holding most of that progression. Returns ``None`` if no case has an entropy map.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best, best_size = None, -1
    for case in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
        fus = sorted(int(f.name[len("progression_t"):].split(".")[0]) for f in case.glob("progression_t*.nii*"))
        if not fus or not (pred_dir / case.name / progression_filename(fus[-1], "_entropy")).is_file():
            continue
        size = int(np.asarray(nib.load(case / progression_filename(fus[-1])).dataobj).sum())
        if size > best_size:
            best, best_size, best_fus = case, size, fus
    if best is None:
        return None
    last = nib.load(best / progression_filename(best_fus[-1]))
    axis = plane_axes(last.affine)["axial"]
    mask = np.asarray(last.dataobj) > 0
    per_slice = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    index = int(per_slice.argmax()) if mask.any() else mask.shape[axis] // 2

    def axial(vol: np.ndarray) -> np.ndarray:
        return np.rot90(np.take(vol, index, axis=axis))

    fig, axes = plt.subplots(2, len(best_fus), figsize=(3.2 * len(best_fus), 6.4), squeeze=False)
    for col, fu in enumerate(best_fus):
        flair = sorted(best.glob(f"t{fu}_*.nii*"))
        flair_file = best / image_filename(fu, "flair")
        img = np.asarray(nib.load(flair_file if flair_file.exists() else flair[0]).dataobj, dtype=np.float32)
        ent = np.asarray(nib.load(pred_dir / best.name / progression_filename(fu, "_entropy")).dataobj)
        ref = np.asarray(nib.load(best / progression_filename(fu)).dataobj) > 0
        axes[0, col].imshow(axial(img), cmap="gray")
        axes[0, col].set_title(f"{best.name} FU{fu}")
        im = axes[1, col].imshow(axial(ent), cmap="inferno", vmin=0, vmax=np.log(2))
        axes[1, col].set_title(f"entropy FU{fu}")
        for ax in axes[:, col]:
            if ref.any():
                ax.contour(axial(ref.astype(np.float32)), levels=[0.5], colors="lime", linewidths=0.8)
            ax.axis("off")
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="entropy (nats)")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description="Per-follow-up Dice / lesion F1 (P and NP) and entropy maps.")
    ap.add_argument("pred_dir", help="prediction folder written by 'longiseg predict'")
    ap.add_argument("gt_dir", help="reference folder in the library layout")
    ap.add_argument("--out", required=True, help="report folder")
    ap.add_argument("--protocol", default="segmast", choices=["segmast", "tdw"], help="evaluation protocol")
    args = ap.parse_args(argv)
    pred_dir, gt_dir, out = Path(args.pred_dir), Path(args.gt_dir), Path(args.out)
    for name, folder in (("pred_dir", pred_dir), ("gt_dir", gt_dir)):
        if not folder.is_dir():
            ap.error(f"argument {name}: {folder} is not a folder")
    if out.exists() and not out.is_dir():
        ap.error(f"argument --out: {out} exists and is not a folder")
    try:
        result = evaluate_folder(pred_dir, gt_dir, protocol=args.protocol, model=pred_dir.name)
    except (ValueError, OSError) as err:  # e.g. a case without predictions
        ap.error(" ".join(str(err).split()))
    write_report(result, out)
    summaries = followup_summaries(result)
    write_csv(out / "followups.csv", [{"metric": m, "column": c, **s._asdict()} for m, c, s in summaries])
    print(format_followup_table(summaries))
    png = entropy_figure(pred_dir, gt_dir, out / "entropy.png")
    print(f"\nwritten: {out / 'followups.csv'}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
