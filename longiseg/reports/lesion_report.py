"""The lesion-evolution report: figures (PNG) and one self-contained ``report.html`` (figures embedded).

Per case: the lesion volume over time and, for every new and enlarging lesion, a small montage of the
previous timepoint and the follow-up around it in the three planes (earlier lesions outlined in green,
new tissue in red). The HTML file embeds every figure as base64, so it opens in any browser and can be
sent on its own. The numbers come from :mod:`longiseg.metrics.evolution`.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from longiseg.data import layout
from longiseg.data.case import PLANES, affine_spacing, display_slice, plane_axes
from longiseg.data.predictions import read_prediction
from longiseg.data.volumes import Grid, check_same_grid, read_volume, same_affine
from longiseg.metrics.evolution import RULES, CaseEvolution, LesionChange, check_evolutions
from longiseg.utils.io import PathLike, atomic_write
from longiseg.utils.logging import get_logger
from longiseg.utils.plotting import plain_text, subplots
from longiseg.utils.validation import (
    check_affine,
    check_bool,
    check_instance,
    check_path,
    check_positive_float,
)

_LOG = get_logger(__name__)

__all__ = ["volume_figure", "intensity_window", "change_montage", "write_lesion_report"]


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, facecolor=fig.get_facecolor())
    return buf.getvalue()


@plain_text()  # names with '$' drawn as written, not as math
def volume_figure(evolution: CaseEvolution) -> bytes:
    """PNG of the total lesion volume per timepoint with the new/enlarging counts of each follow-up (a
    ``TypeError`` if ``evolution`` is not a :class:`~longiseg.metrics.evolution.CaseEvolution`)."""
    check_instance("evolution", evolution, CaseEvolution, "a CaseEvolution")
    vols = np.asarray(evolution.volumes_mm3) / 1000.0
    t = np.arange(vols.size)
    fig, ax = subplots(figsize=(4.2, 2.8))
    ax.plot(t, vols, "o-", color="#3050c0")
    for f in evolution.followups:
        label = f"+{f.new} new, {f.enlarging} enl." if f.active else "no activity"
        ax.annotate(label, (f.followup, vols[f.followup]), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=8, color="#c02020" if f.active else "#606060")
    ax.set_xticks(t, ["baseline"] + [f"FU {k}" for k in t[1:]])
    ax.set_ylabel("lesion volume (mL)")
    top = float(vols.max()) if vols.size else 0.0
    ax.set_ylim(0, top * 1.25 + 0.05)
    ax.set_xlim(-0.4, vols.size - 0.6)
    ax.set_title(evolution.case_id, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _crop_slice(vol: np.ndarray, axis: int, centre: Sequence[int], half: Sequence[int]) -> np.ndarray:
    """The plane through ``centre`` normal to ``axis``, cropped to ``centre +- half`` (zero padded)."""
    idx: list[slice | int] = []
    pads = []
    for a in range(3):
        if a == axis:
            idx.append(int(np.clip(centre[a], 0, vol.shape[a] - 1)))
            continue
        lo, hi = centre[a] - half[a], centre[a] + half[a] + 1
        idx.append(slice(max(lo, 0), min(hi, vol.shape[a])))
        pads.append((max(0, -lo), max(0, hi - vol.shape[a])))
    return np.pad(vol[tuple(idx)], pads)


def _view(vol: np.ndarray, axis: int, centre: Sequence[int], half: Sequence[int], affine: np.ndarray
          ) -> tuple[np.ndarray, float]:
    """:func:`_crop_slice` in one anatomical orientation whatever the storage order, ready for
    ``imshow(..., origin="lower", aspect=aspect)``: ``(image, aspect)`` (see
    :func:`~longiseg.data.case.display_slice`)."""
    img, aspect = display_slice(_crop_slice(vol, axis, centre, half), affine, axis)
    return img.T, aspect


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """Display window ``(low, high)`` of a scan ``(D, H, W)``: the 1st and 99.5th percentiles of its non-zero
    voxels (the background of a skull-stripped scan is 0), ``(0, 1)`` for an all-zero scan."""
    check_instance("image", image, np.ndarray, "a numpy array (D, H, W)")
    fg = image[image != 0]
    if not fg.size:
        return 0.0, 1.0
    low, high = np.percentile(fg, [1.0, 99.5])
    return float(low), float(high)


@plain_text()  # names with '$' drawn as written, not as math
def change_montage(change: LesionChange, before: np.ndarray, after: np.ndarray, earlier: np.ndarray,
                   new_tissue: np.ndarray, affine: np.ndarray, *, field_mm: float = 40.0,
                   title: str = "", windows: Sequence[tuple[float, float]] | None = None) -> bytes:
    """PNG montage around one change: rows previous timepoint / follow-up, columns the three planes.

    Args:
        change: the new or enlarging lesion.
        before: image ``(D, H, W)`` of timepoint ``k-1`` (one modality).
        after: image ``(D, H, W)`` of timepoint ``k``.
        earlier: lesion mask ``L_{k-1}`` ``(D, H, W)`` (green outline).
        new_tissue: new tissue ``N_k`` ``(D, H, W)`` (red outline on the follow-up).
        affine: ``(4, 4)`` voxel-to-world matrix (plane orientation and spacing).
        field_mm: side of the field of view in mm (a finite number > 0).
        title: figure title.
        windows: display windows ``(low, high)`` of ``before`` and ``after``; ``None`` computes each with
            :func:`intensity_window` (pass them when drawing many changes of the same scans: a window is a pass
            over the whole scan).

    Raises:
        TypeError: ``change`` is not a :class:`~longiseg.metrics.evolution.LesionChange`, a volume not an array,
            ``field_mm`` not a number.
        ValueError: volumes that are not 3D or differ in shape, a bad ``affine``, ``field_mm`` not > 0.
    """
    check_instance("change", change, LesionChange, "a LesionChange")
    field_mm = check_positive_float("field_mm", field_mm)
    affine = check_affine("affine", affine)
    vols = {"before": before, "after": after, "earlier": earlier, "new_tissue": new_tissue}
    for name, vol in vols.items():
        check_instance(name, vol, np.ndarray, "a numpy array (D, H, W)")
    shapes = {name: vol.shape for name, vol in vols.items()}
    if len(set(shapes.values())) != 1 or before.ndim != 3:
        raise ValueError(f"before, after, earlier and new_tissue must be volumes (D, H, W) of one shape, got {shapes}")
    sp = affine_spacing(affine)
    half = [max(2, int(round(field_mm / 2 / s))) for s in sp]
    axes_of = plane_axes(affine)
    c = change.centre_voxel
    if windows is None:  # one window per scan: sessions differ in scanner gain
        windows = [intensity_window(before), intensity_window(after)]
    elif len(windows) != 2 or not all(len(w) == 2 and w[0] <= w[1] for w in windows):
        raise ValueError(f"windows must be two (low, high) pairs with low <= high, one per scan, got {windows!r}")
    fig, grid = subplots(2, 3, figsize=(6.0, 4.2), facecolor="black")
    for col, plane in enumerate(PLANES):
        ax_n = axes_of[plane]
        scans = [_view(img, ax_n, c, half, affine) for img in (before, after)]
        e = _view(earlier, ax_n, c, half, affine)[0].astype(np.float32)  # the outlines: the same on both rows
        n = _view(new_tissue, ax_n, c, half, affine)[0].astype(np.float32)
        for row, (img, aspect) in enumerate(scans):
            ax = grid[row, col]
            ax.imshow(img, cmap="gray", vmin=windows[row][0], vmax=windows[row][1],
                      origin="lower", aspect=aspect, interpolation="nearest")
            if e.any():
                ax.contour(e, levels=[0.5], colors="#00e060", linewidths=0.8)
            if row == 1 and n.any():
                ax.contour(n, levels=[0.5], colors="#ff3030", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(plane, color="white", fontsize=9)
        grid[0, 0].set_ylabel(f"timepoint {change.followup - 1}", color="white", fontsize=9)
        grid[1, 0].set_ylabel(f"follow-up {change.followup}", color="white", fontsize=9)
    fig.suptitle(title, color="white", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _png(fig)


def _check_modality(folder: Path, modality: str | None) -> dict[int, dict[str, Path]]:
    """The images of a case folder (:func:`~longiseg.data.layout.scan_images`; none without the folder), refusing
    a ``modality`` asked for explicitly that its baseline images lack: a typo is an error, not a report without
    montages."""
    found = layout.scan_images(folder) if folder.is_dir() else {}
    if modality is not None and found.get(0) and modality.lower() not in found[0]:
        raise ValueError(f"modality {modality!r} (--modality): {folder} has no {layout.image_filename(0, modality)}; "
                         f"its images are of {', '.join(sorted(found[0]))}")
    return found


def _load_images(folder: Path, timepoints: int, modality: str | None, masks: Grid
                 ) -> tuple[list[np.ndarray | None] | None, str, dict[int, Path]]:
    """Images of one modality per timepoint (``None`` for a timepoint without one), the modality and the missing
    files by timepoint; ``(None, reason, {})`` without a baseline image. Each image must lie on the grid of the
    case's masks (``masks``: the baseline mask's ``(path, shape, affine)``)."""
    found = _check_modality(folder, modality)
    if not found.get(0):
        return None, f"no images (t0_*.nii.gz) in {folder}", {}
    if modality is None:
        modality = "flair" if "flair" in found[0] else sorted(found[0])[0]
    out: list[np.ndarray | None] = []
    missing: dict[int, Path] = {}
    for t in range(timepoints):
        p = found.get(t, {}).get(modality.lower())
        if p is None:
            missing[t] = folder / layout.image_filename(t, modality)
            out.append(None)
            continue
        arr, img_affine, _ = read_volume(p, what="image", dtype=np.float32)
        check_same_grid((p, arr.shape, img_affine), masks, what="image")  # montages need the masks' images
        out.append(arr)
    return out, modality, missing


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.6em 0}td,th{border:1px solid #bbb;padding:3px 7px;font-size:13px}
th{background:#eef}.yes{color:#b00000;font-weight:bold}.note{color:#a05000}
.case{border-top:2px solid #889;margin-top:1.5em}img{margin:4px;vertical-align:top}
.small{font-size:12px;color:#555}"""


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _montage_name(case_id: str, change: LesionChange) -> str:
    return f"{case_id}_fu{change.followup}_lesion{change.index}_{change.kind}.png"


def _active_patients(evolutions: Sequence[CaseEvolution]) -> str:
    """``Active patients: N of M`` counted by patient (a patient with several cases is active when any is); it
    counted cases."""
    active: dict[str, bool] = {}
    for ev in evolutions:
        active[ev.patient_id] = active.get(ev.patient_id, False) or bool(ev.active)
    cases = f" ({len(evolutions)} cases)" if len(evolutions) != len(active) else ""
    return f"<p>Active patients: {sum(active.values())} of {len(active)}{cases}.</p>"


def _activity(active: bool) -> str:
    return '<span class="yes">yes</span>' if active else "no"


def _lesions_over_time(base: np.ndarray, prog: np.ndarray) -> list[np.ndarray]:
    """The lesion masks ``L_0 .. L_{T-1}`` of a case (``L_k = L_{k-1} | progression_k``: lesions do not shrink) from
    its baseline ``(D, H, W)`` and progression ``(T-1, D, H, W)`` bool masks."""
    lesion = [base]
    for p in prog:
        lesion.append(lesion[-1] | p)
    return lesion


def _check_same_masks(ev: CaseEvolution, masks_dir: Path, affine: np.ndarray, lesion: Sequence[np.ndarray]) -> None:
    """Refuse masks read for the montages that are not those ``ev`` was computed from: another grid, or no new
    tissue at a follow-up where ``ev`` found a change (the montages would outline other lesions); ``lesion``: the
    masks' :func:`_lesions_over_time`."""
    where = f"case {ev.case_id!r}: the masks in {masks_dir}"
    if not same_affine(affine, ev.affine):
        raise ValueError(f"{where} lie on another grid than those its evolution was computed from: give mask_root "
                         "the folder passed to evolution_folder")
    for k, f in enumerate(ev.followups, start=1):
        if f.changes and not (lesion[k] & ~lesion[k - 1]).any():
            raise ValueError(f"{where} hold no new tissue at follow-up {k}, where its evolution found "
                             f"{len(f.changes)} change(s): give mask_root the folder passed to evolution_folder")


def write_lesion_report(
    evolutions: Sequence[CaseEvolution],
    mask_root: PathLike,
    out_dir: PathLike,
    *,
    images_root: PathLike | None = None,
    modality: str | None = None,
    montages: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``figures/*.png`` and ``report.html`` (figures embedded) for ``evolutions``.

    Args:
        evolutions: results of :func:`~longiseg.metrics.evolution.evolution_folder` on ``mask_root``.
        mask_root: the mask folder they were computed from (read again for the montages).
        out_dir: report folder.
        images_root: cohort folder with the images (``CASE/t{k}_{modality}.nii.gz``) on the masks' grid;
            default ``mask_root`` itself. Without images the report says so and has no montages.
        modality: image shown in the montages (default ``flair`` if present, else the first).
        montages: draw a montage per new/enlarging lesion.
        overwrite: replace existing files.
        progress: show a progress bar over the cases.

    Returns:
        The path of ``report.html``.

    Raises:
        TypeError: ``evolutions`` not a sequence of :class:`~longiseg.metrics.evolution.CaseEvolution`, a folder
            not a path, ``modality`` neither ``None`` nor a str, a flag not a bool.
        ValueError: no evolutions, or evolutions of different options
            (:func:`~longiseg.metrics.evolution.check_evolutions`); ``modality`` given and missing from a case's
            baseline images; an image on another grid than its case's masks; masks in ``mask_root`` that are not
            those the evolutions were computed from (another grid, or no new tissue where a change was found).
        FileExistsError: without ``overwrite``, a file the report would write exists (checked before any is
            written).

    A failure part-way removes the figures this call created (a rerun is not refused for them); figures of an
    earlier report that it replaced (``overwrite``) stay replaced. ``longiseg lesions`` writes the report as a whole.
    """
    montages = check_bool("montages", montages)
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    evolutions = check_evolutions(evolutions)
    if modality is not None and not isinstance(modality, str):
        raise TypeError(f"modality must be a str (e.g. 'flair') or None, got {type(modality).__name__}")
    out, masks_dir = check_path("out_dir", out_dir), check_path("mask_root", mask_root)
    img_dir = check_path("images_root", images_root) if images_root is not None else masks_dir
    figs = out / "figures"
    created: list[Path] = []  # figures that did not exist before this call (replaced ones are not removed)

    def save(name: str, png: bytes) -> None:
        new = not (figs / name).exists()
        path = atomic_write(figs / name, lambda fh: fh.write(png), mode="wb", overwrite=overwrite)
        if new:
            created.append(path)

    try:
        return _write_report(evolutions, masks_dir, img_dir, out, modality, montages, overwrite, progress, save)
    except BaseException:  # interrupted too: no figures without their report.html
        for path in created:
            path.unlink(missing_ok=True)
        raise


def _write_report(evolutions: Sequence[CaseEvolution], masks_dir: Path, img_dir: Path, out: Path,
                  modality: str | None, montages: bool, overwrite: bool, progress: bool,
                  save: Callable[[str, bytes], None]) -> Path:
    """The body of :func:`write_lesion_report` (arguments checked); figures are written through ``save``."""
    from tqdm.auto import tqdm

    figs = out / "figures"
    if montages:  # every case's before any figure is written, also of cases without changes to draw
        for ev in evolutions:
            _check_modality(img_dir / ev.case_id, modality)
    if not overwrite:  # every file this report may write, before any is written (figures went in, then
        targets = [out / "report.html"] + [figs / f"{ev.case_id}_volume.png" for ev in evolutions]  # it refused
        targets += [figs / _montage_name(ev.case_id, c) for ev in evolutions for c in ev.changes] if montages else []
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise FileExistsError(f"{len(existing)} file(s) of the report exist, e.g. {existing[0]}; pass "
                                  "overwrite=True to replace them")
    first = evolutions[0]
    rows = []
    for ev in evolutions:
        for f in ev.followups:
            rows.append([html.escape(ev.case_id), html.escape(ev.patient_id), str(f.followup), str(f.new),
                         str(f.enlarging), str(f.merged), _activity(f.active), f"{f.previous_volume_mm3:.0f}",
                         f"{f.lesion_volume_mm3:.0f}",  # the change shown is that of the volumes shown (the
                         f"{round(f.lesion_volume_mm3) - round(f.previous_volume_mm3):+d}"])  # CSV: exact)
    parts = [
        f"<h1>Lesion evolution report</h1><p class='small'>{len(evolutions)} case(s) from "
        f"<code>{html.escape(masks_dir.resolve().name or str(masks_dir.resolve()))}</code>, written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
        "by longiseg.</p>",
        f"<p><b>Rules.</b> {html.escape(RULES)}</p><p><b>Options.</b> minimum lesion volume "
        f"{first.min_volume_mm3:g} mm&sup3;, connectivity {first.connectivity}.</p>",
        _active_patients(evolutions),
        _table(["case", "patient", "follow-up", "new", "enlarging", "of which merges", "MRI activity",
                "volume before (mm³)", "volume after (mm³)", "change (mm³)"], rows),
    ]
    for ev in tqdm(evolutions, desc="lesion report", unit="case", disable=not progress):
        png = volume_figure(ev)
        save(f"{ev.case_id}_volume.png", png)
        sec = [f"<div class='case'><h2>{html.escape(ev.case_id)} (patient {html.escape(ev.patient_id)}): "
               f"MRI activity {_activity(ev.active)}</h2>",
               f"<p>Baseline: {ev.baseline_lesions} lesion{'s' * (ev.baseline_lesions != 1)}, "
               f"{ev.baseline_volume_mm3:.0f} mm³.</p>",
               _img_tag(png, f"lesion volume of {ev.case_id}")]
        changes = ev.changes
        if changes:
            sec.append(_table(
                ["follow-up", "#", "kind", "new tissue (mm³)", "lesion (mm³)", "centre x, y, z (mm)", "note"],
                [[str(c.followup), str(c.index), c.kind, f"{c.added_volume_mm3:.0f}", f"{c.lesion_volume_mm3:.0f}",
                  ", ".join(f"{v:.1f}" for v in c.centre_mm),
                  f"<span class='note'>{html.escape(c.note)}</span>"] for c in changes]))
        else:
            sec.append("<p>No new or enlarging lesions.</p>")
        if changes and montages:
            masks, affine, _ = read_prediction(masks_dir, ev.case_id, len(ev.followups) + 1, "mask")
            base, prog = masks[0].astype(bool), masks[1:].astype(bool)
            lesion = _lesions_over_time(base, prog)
            _check_same_masks(ev, masks_dir, affine, lesion)
            images, why, missing = _load_images(img_dir / ev.case_id, len(ev.followups) + 1, modality,
                                                (masks_dir / ev.case_id / layout.BASELINE_MASK, base.shape, affine))
            if images is None:
                sec.append(f"<p class='note'>No montages: {html.escape(why)} (give the image folder).</p>")
            else:
                drawn = [c for c in changes if images[c.followup - 1] is not None and images[c.followup] is not None]
                windows: dict[int, tuple[float, float]] = {}  # per timepoint, not per change: whole-scan passes
                new_tissue: dict[int, np.ndarray] = {}
                for c in tqdm(drawn, desc=f"{ev.case_id} montages", unit="change", leave=False,
                              disable=not progress):
                    k = c.followup
                    for t in (k - 1, k):
                        if t not in windows:
                            windows[t] = intensity_window(images[t])
                    if k not in new_tissue:
                        new_tissue[k] = lesion[k] & ~lesion[k - 1]
                    title = f"{ev.case_id} FU {k} #{c.index}: {c.kind}, {c.added_volume_mm3:.0f} mm³ ({why})"
                    png = change_montage(c, images[k - 1], images[k], lesion[k - 1], new_tissue[k], affine,
                                         title=title, windows=(windows[k - 1], windows[k]))
                    save(_montage_name(ev.case_id, c), png)
                    sec.append(_img_tag(png, title))
                if len(drawn) < len(changes):  # the changes one of whose two images is missing
                    needed = sorted({t for c in changes if c not in drawn for t in (c.followup - 1, c.followup)
                                     if t in missing})
                    names = ", ".join(str(missing[t]) for t in needed)
                    sec.append(f"<p class='note'>{len(changes) - len(drawn)} change(s) without a montage: missing "
                               f"image(s) {html.escape(names)}.</p>")
                    _LOG.warning("case %s: %d of %d change(s) have no montage: missing image(s) %s", ev.case_id,
                                 len(changes) - len(drawn), len(changes), names)
        sec.append("</div>")
        parts.extend(sec)
    doc = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Lesion evolution report</title>"
           f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    return atomic_write(out / "report.html", lambda fh: fh.write(doc), overwrite=overwrite)
