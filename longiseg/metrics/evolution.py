"""Lesion evolution of longitudinal cases: new and enlarging lesions, lesion volume over time, MRI activity.

The clinical read-out of MS monitoring: per patient and follow-up, how many lesions are new, how many
enlarge, where they are, and how the lesion load changes. It works on masks only (predictions or
references in the library layout, :mod:`longiseg.data.layout`), so it needs no reference annotation.

Rules (``min_volume_mm3`` and ``connectivity`` are arguments):

* **Lesion masks over time.** ``L_0`` is the baseline mask and ``L_k = L_{k-1} | P_k``, where ``P_k`` is
  the progression mask of follow-up ``k`` (the layout stores no follow-up lesion mask; lesions are
  assumed not to shrink).
* **Lesions** are connected components of a lesion mask (``connectivity`` 6, 18 or 26; default 26) whose
  volume is at least ``min_volume_mm3``; smaller components are ignored everywhere (not counted, not
  earlier lesions).
* **New tissue** of follow-up ``k`` is ``N_k = P_k & ~L_{k-1}``. Every component of ``L_k`` that holds at
  least ``min_volume_mm3`` of new tissue is a **changed lesion**:

  - **new**: it contains no earlier lesion (its progression voxels have no contact, under the
    connectivity, with a baseline or earlier lesion);
  - **enlarging**: it contains an earlier lesion (it grows from it);
  - **merged**: an enlarging lesion containing two or more earlier lesions (new tissue joins them). It is
    counted once, as one enlarging lesion, and reported as a merge naming the lesions it joins.

  A growing lesion whose new tissue falls apart into several progression components (a rim of growth)
  is one enlarging lesion; ``components`` says how many pieces it has.
* **Volume** of a change: the new tissue it holds (``added_volume_mm3``) and the whole lesion at the
  follow-up (``lesion_volume_mm3``). **Centre**: centre of mass of the new tissue in scanner coordinates
  (mm, the NIfTI affine's world space, RAS+), and the voxel of the new tissue nearest it (where to look: for a
  rim of growth around an older lesion the centre of mass lies inside the older lesion, not on the change).
* **MRI activity** of a follow-up: at least one new or enlarging lesion. A patient is active if any
  follow-up is.
* **Lesion volume** of a timepoint: the total volume of its lesions; changes are relative to the
  previous timepoint.

Command line: ``longiseg lesions DIR --out REPORT`` (:mod:`longiseg.workflows.lesions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from longiseg.data.case import affine_spacing
from longiseg.data.lesions import check_connectivity, check_min_volume, min_voxel_count
from longiseg.metrics.inputs import as_mask, check_followup_masks
from longiseg.metrics.lesion import label_lesions
from longiseg.utils.io import PathLike, atomic_write, atomic_write_json, csv_text
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import check_affine, check_bool, check_instance, check_path, check_sequence

__all__ = [
    "CHANGE_KINDS",
    "LesionChange",
    "FollowupEvolution",
    "CaseEvolution",
    "lesion_evolution",
    "evolution_folder",
    "check_evolutions",
    "write_evolution_tables",
]

_LOG = get_logger(__name__)

CHANGE_KINDS: tuple[str, str] = ("new", "enlarging")
RULES = (
    "L_0 = baseline mask, L_k = L_(k-1) | progression_k (lesions do not shrink); lesions are connected "
    "components of at least min_volume_mm3; each lesion of L_k holding at least min_volume_mm3 of new tissue "
    "(progression_k outside L_(k-1)) is new if it contains no earlier lesion, enlarging if it contains one, "
    "and a merge (counted as one enlarging lesion) if it contains two or more; MRI activity = at least one "
    "new or enlarging lesion."
)


@dataclass(frozen=True)
class LesionChange:
    """One new or enlarging lesion of a follow-up.

    Attributes:
        followup: follow-up index ``k >= 1``.
        index: 1-based number of the change within its follow-up (raster order of the lesion).
        kind: ``"new"`` or ``"enlarging"``.
        added_volume_mm3: volume of the new tissue (progression voxels outside earlier lesions).
        lesion_volume_mm3: volume of the whole lesion at the follow-up.
        centre_mm: centre of mass of the new tissue in scanner (world) coordinates, mm.
        centre_voxel: index ``(d, h, w)`` of the new-tissue voxel nearest that centre (in mm), so a voxel of the
            change also where the centre of mass is not (a rim of growth around an older lesion).
        earlier_lesions: 1-based labels (raster order) of the lesions of timepoint ``k-1`` it contains.
        earlier_volumes_mm3: their volumes.
        components: number of progression components the new tissue consists of.
    """

    followup: int
    index: int
    kind: str
    added_volume_mm3: float
    lesion_volume_mm3: float
    centre_mm: tuple[float, float, float]
    centre_voxel: tuple[int, int, int]
    earlier_lesions: tuple[int, ...] = ()
    earlier_volumes_mm3: tuple[float, ...] = ()
    components: int = 1

    @property
    def merged(self) -> bool:
        """Whether the lesion joins two or more earlier lesions."""
        return len(self.earlier_lesions) >= 2

    @property
    def note(self) -> str:
        """Plain-language remark for merged lesions and growth in several pieces (empty otherwise)."""
        parts = []
        if self.merged:
            ids = ", ".join(f"#{i}" for i in self.earlier_lesions)
            parts.append(f"merge: joins lesions {ids} of timepoint {self.followup - 1} (counted once)")
        if self.components > 1:
            parts.append(f"new tissue in {self.components} separate pieces")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return {
            "followup": self.followup, "index": self.index, "kind": self.kind, "merged": self.merged,
            "added_volume_mm3": self.added_volume_mm3, "lesion_volume_mm3": self.lesion_volume_mm3,
            "centre_mm": list(self.centre_mm), "centre_voxel": list(self.centre_voxel),
            "earlier_lesions": list(self.earlier_lesions), "earlier_volumes_mm3": list(self.earlier_volumes_mm3),
            "components": self.components, "note": self.note,
        }


@dataclass(frozen=True)
class FollowupEvolution:
    """Read-out of one follow-up.

    Attributes:
        followup: follow-up index ``k >= 1``.
        changes: the new and enlarging lesions.
        lesion_count: lesions at the follow-up (components of ``L_k`` of at least the minimum volume).
        lesion_volume_mm3: their total volume.
        previous_volume_mm3: total lesion volume of timepoint ``k-1``.
    """

    followup: int
    changes: tuple[LesionChange, ...]
    lesion_count: int
    lesion_volume_mm3: float
    previous_volume_mm3: float

    @property
    def new(self) -> int:
        """Number of new lesions."""
        return sum(c.kind == "new" for c in self.changes)

    @property
    def enlarging(self) -> int:
        """Number of enlarging lesions (merges included, each counted once)."""
        return sum(c.kind == "enlarging" for c in self.changes)

    @property
    def merged(self) -> int:
        """Number of enlarging lesions that join two or more earlier lesions."""
        return sum(c.merged for c in self.changes)

    @property
    def active(self) -> bool:
        """MRI activity: at least one new or enlarging lesion."""
        return bool(self.changes)

    @property
    def volume_change_mm3(self) -> float:
        """Lesion volume change from the previous timepoint."""
        return self.lesion_volume_mm3 - self.previous_volume_mm3

    def summary(self) -> dict[str, Any]:
        """Counts and volumes without the per-lesion records."""
        return {
            "followup": self.followup, "new": self.new, "enlarging": self.enlarging, "merged": self.merged,
            "mri_activity": "yes" if self.active else "no", "lesion_count": self.lesion_count,
            "lesion_volume_mm3": self.lesion_volume_mm3, "previous_volume_mm3": self.previous_volume_mm3,
            "volume_change_mm3": self.volume_change_mm3,
        }


@dataclass(frozen=True)
class CaseEvolution:
    """Lesion evolution of one case.

    Attributes:
        case_id, patient_id: names.
        baseline_lesions: lesions at baseline.
        baseline_volume_mm3: their total volume.
        followups: one :class:`FollowupEvolution` per follow-up.
        affine: ``(4, 4)`` voxel-to-world matrix of the masks.
        min_volume_mm3, connectivity: the thresholds used.
    """

    case_id: str
    patient_id: str
    baseline_lesions: int
    baseline_volume_mm3: float
    followups: tuple[FollowupEvolution, ...]
    affine: np.ndarray = field(repr=False)
    min_volume_mm3: float = 0.0
    connectivity: int = 26

    @property
    def active(self) -> bool:
        """MRI activity in any follow-up."""
        return any(f.active for f in self.followups)

    @property
    def volumes_mm3(self) -> list[float]:
        """Total lesion volume of every timepoint, baseline first."""
        return [self.baseline_volume_mm3] + [f.lesion_volume_mm3 for f in self.followups]

    @property
    def changes(self) -> list[LesionChange]:
        """All changes of all follow-ups."""
        return [c for f in self.followups for c in f.changes]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (counts, volumes and every change)."""
        return {
            "case_id": self.case_id, "patient_id": self.patient_id,
            "mri_activity": "yes" if self.active else "no",
            "baseline_lesions": self.baseline_lesions, "baseline_volume_mm3": self.baseline_volume_mm3,
            "volumes_mm3": self.volumes_mm3,
            "followups": [{**f.summary(), "lesions": [c.to_dict() for c in f.changes]} for f in self.followups],
        }


def _changes(prev: np.ndarray, cur: np.ndarray, prog: np.ndarray, sp: np.ndarray, affine: np.ndarray,
             followup: int, conn: int, vmin: float) -> tuple[list[LesionChange], int, float, float]:
    """Changed lesions of one follow-up, and the lesion count/volume of the previous and current timepoint."""
    before = label_lesions(prev, sp, connectivity=conn, min_volume_mm3=vmin)
    after_all = label_lesions(cur, sp, connectivity=conn)  # every component: holds new tissue or not
    after = label_lesions(cur, sp, connectivity=conn, min_volume_mm3=vmin)
    vox = after_all.voxel_volume_mm3
    added = prog & ~prev
    lab = after_all.labels
    added_vox = np.bincount(lab[added], minlength=after_all.n + 1)
    pieces = label_lesions(added, sp, connectivity=conn)
    min_voxels = max(1, min_voxel_count(vmin, vox))  # compare voxel counts: no float round-off
    changes: list[LesionChange] = []
    boxes = ndimage.find_objects(lab)  # per-lesion work in the lesion's bounding box, not the whole volume
    for f in np.flatnonzero(added_vox[1:] >= min_voxels).tolist():
        f += 1
        box = boxes[f - 1]
        inside = lab[box] == f
        new_here = added[box] & inside
        earlier_labels = before.labels[box]
        earlier = np.unique(earlier_labels[inside & (earlier_labels > 0)])
        coords = np.argwhere(new_here) + [s.start for s in box]
        centre_vox = coords.mean(axis=0)
        centre_mm = affine[:3, :3] @ centre_vox + affine[:3, 3]
        # where to look: the new-tissue voxel nearest the centre of mass (for a rim of growth that centre lies
        # inside the older lesion); the first in raster order among equally near ones
        nearest = coords[int(np.argmin((((coords - centre_vox) @ affine[:3, :3].T) ** 2).sum(axis=1)))]
        n_pieces = int(np.unique(pieces.labels[box][new_here]).size)
        changes.append(LesionChange(
            followup=followup,
            index=len(changes) + 1,
            kind="enlarging" if earlier.size else "new",
            added_volume_mm3=float(added_vox[f] * vox),
            lesion_volume_mm3=float(after_all.voxels[f - 1] * vox),
            centre_mm=tuple(round(float(v), 2) for v in centre_mm),  # type: ignore[arg-type]
            centre_voxel=tuple(int(v) for v in nearest),  # type: ignore[arg-type]
            earlier_lesions=tuple(int(e) for e in earlier),
            earlier_volumes_mm3=tuple(float(before.voxels[e - 1] * vox) for e in earlier),
            components=n_pieces,
        ))
    return changes, after.n, float(before.volumes_mm3.sum()), float(after.volumes_mm3.sum())


def lesion_evolution(
    baseline: np.ndarray,
    progression: np.ndarray | Sequence[np.ndarray],
    affine: np.ndarray,
    *,
    min_volume_mm3: float = 3.0,
    connectivity: int = 26,
    case_id: str = "case",
    patient_id: str | None = None,
) -> CaseEvolution:
    """New and enlarging lesions of every follow-up of one case (rules: module docstring).

    Args:
        baseline: binary baseline lesion mask ``(D, H, W)``.
        progression: binary progression masks ``(T-1, D, H, W)``, follow-up ``k`` relative to ``k-1``.
        affine: ``(4, 4)`` voxel-to-world matrix shared by the masks (spacing and scanner coordinates).
        min_volume_mm3: smallest lesion (and smallest new tissue of a changed lesion), mm^3.
        connectivity: 6, 18 or 26.
        case_id: name of the case.
        patient_id: name of the patient (defaults to ``case_id``).

    Returns:
        A :class:`CaseEvolution`.

    Raises:
        TypeError: ``progression`` is neither a sequence of masks nor a ``(T-1, D, H, W)`` array, a mask is not an
            array or tensor, ``case_id`` is not a str or ``patient_id`` neither a str nor ``None``.
        ValueError: masks not binary or of different shapes, no follow-up, one ``(D, H, W)`` array as the
            follow-ups, a bad affine, connectivity or volume.
    """
    check_instance("case_id", case_id, str, "a str")
    check_instance("patient_id", patient_id, (str, type(None)), "a str or None")
    base = as_mask("baseline", baseline, ndim=3)
    check_followup_masks("progression", progression, base.ndim)
    prog = [as_mask(f"progression[{i}]", p, ndim=3) for i, p in enumerate(progression)]
    for i, p in enumerate(prog):
        if p.shape != base.shape:
            raise ValueError(f"progression[{i}] must have the baseline's shape {base.shape}, got {p.shape}")
    aff = check_affine("affine", affine)
    conn = check_connectivity(connectivity, 3)
    vmin = check_min_volume(min_volume_mm3)
    sp = np.asarray(affine_spacing(aff))
    first = label_lesions(base, sp, connectivity=conn, min_volume_mm3=vmin)
    followups = []
    prev = base
    inside = []  # follow-ups whose mask marks voxels that were lesion already
    for k, p in enumerate(prog, start=1):
        overlap = int(np.count_nonzero(p & prev))
        if overlap:
            inside.append(f"follow-up {k}: {overlap} voxel{'s' * (overlap != 1)}")
        cur = prev | p
        changes, n_after, vol_before, vol_after = _changes(prev, cur, p, sp, aff, k, conn, vmin)
        followups.append(FollowupEvolution(k, tuple(changes), n_after, vol_after, vol_before))
        prev = cur
    if inside:  # e.g. a difference mask (UCSF-ALPTDG's marks shrinking tissue too), or a model's raw head
        _LOG.warning("case %s: the progression mask marks voxels that were lesion at the previous timepoint (%s); "
                     "progression is lesion at t(k) but not at t(k-1), so the report counts only the voxels outside "
                     "the earlier lesions (longiseg evaluate scores the masks as they are)", case_id, ", ".join(inside))
    return CaseEvolution(case_id=case_id, patient_id=case_id if patient_id is None else patient_id,
                         baseline_lesions=first.n, baseline_volume_mm3=float(first.volumes_mm3.sum()),
                         followups=tuple(followups), affine=aff, min_volume_mm3=vmin, connectivity=conn)


def evolution_folder(
    root: PathLike,
    *,
    min_volume_mm3: float = 3.0,
    connectivity: int = 26,
    progress: bool = True,
) -> list[CaseEvolution]:
    """:func:`lesion_evolution` of every case folder of ``root`` (predictions or references).

    Cases are listed by :func:`~longiseg.data.cohort.find_mask_cases` (sub-folders holding
    ``baseline_mask.nii.gz`` and ``progression_t1..n.nii.gz``; patient ids from ``root``'s manifest when
    present) and read by :func:`~longiseg.data.loading.read_mask_case` (binary masks on one grid; a progression
    flag that ``root``'s manifest gives must agree with the case's progression masks, as training checks it).

    Raises:
        FileNotFoundError: ``root`` holds no case, or a case lacks a mask.
        ValueError: a bad option; naming the case and file: a mask that is not binary, masks on different grids,
            a manifest's progression flag that the masks contradict.
    """
    from tqdm.auto import tqdm

    from longiseg.data.cohort import find_mask_cases
    from longiseg.data.loading import read_mask_case

    check_min_volume(min_volume_mm3)  # bad options fail before any case is read
    check_connectivity(connectivity, 3)
    root = check_path("root", root)
    progress = check_bool("progress", progress)
    out = []
    for entry in tqdm(find_mask_cases(root), desc="lesion evolution", unit="case", disable=not progress):
        masks, affine, _ = read_mask_case(root, entry)  # predicted or reference; a manifest's flags are checked
        out.append(lesion_evolution(masks[0], masks[1:], affine, min_volume_mm3=min_volume_mm3,
                                    connectivity=connectivity, case_id=entry.case_id,
                                    patient_id=entry.patient_id or None))
    return out


_LESION_COLUMNS = ("case_id", "patient_id", "followup", "index", "kind", "merged", "added_volume_mm3",
                   "lesion_volume_mm3", "centre_x_mm", "centre_y_mm", "centre_z_mm", "centre_voxel",
                   "earlier_lesions", "components", "note")
_FOLLOWUP_COLUMNS = ("case_id", "patient_id", "followup", "new", "enlarging", "merged", "mri_activity",
                     "lesion_count", "lesion_volume_mm3", "previous_volume_mm3", "volume_change_mm3")


def check_evolutions(evolutions: Sequence[CaseEvolution]) -> tuple[CaseEvolution, ...]:
    """``evolutions`` as a tuple, if it is a non-empty sequence of :class:`CaseEvolution` computed with one
    ``min_volume_mm3`` and ``connectivity``: the check of every writer of a lesion report (whose tables and page state
    one set of options).

    Raises:
        TypeError: not a sequence of :class:`CaseEvolution` (a generator: make it a list).
        ValueError: empty, or evolutions computed with different options (naming a case of each).
    """
    evs = tuple(check_sequence("evolutions", evolutions, CaseEvolution, "a CaseEvolution"))
    if not evs:
        raise ValueError("evolutions must not be empty")
    first = evs[0]
    for ev in evs[1:]:
        if (ev.min_volume_mm3, ev.connectivity) != (first.min_volume_mm3, first.connectivity):
            raise ValueError(
                f"evolutions must share one min_volume_mm3 and connectivity (a report states one set of options): "
                f"case {first.case_id!r} has {first.min_volume_mm3:g} mm^3 and {first.connectivity}, case "
                f"{ev.case_id!r} {ev.min_volume_mm3:g} mm^3 and {ev.connectivity}")
    return evs


def write_evolution_tables(evolutions: Sequence[CaseEvolution], out_dir: PathLike, *,
                           overwrite: bool = False) -> dict[str, Path]:
    """Write ``lesions.csv`` (one row per change), ``followups.csv`` and ``lesions.json`` atomically.

    Args:
        evolutions: the cases' evolutions (:func:`evolution_folder`), computed with one set of options.
        out_dir: the folder of the three files.
        overwrite: replace existing files.

    Returns:
        ``{"lesions_csv", "followups_csv", "json"}`` paths.

    Raises:
        TypeError: ``evolutions`` is not a sequence of :class:`CaseEvolution`, ``out_dir`` not a path,
            ``overwrite`` not a bool.
        ValueError: no evolutions, or evolutions of different options (:func:`check_evolutions`).
        FileExistsError: without ``overwrite``, one of the three files exists (checked before any is written).
    """
    evolutions = check_evolutions(evolutions)
    out = check_path("out_dir", out_dir)
    overwrite = check_bool("overwrite", overwrite)
    names = {"lesions_csv": "lesions.csv", "followups_csv": "followups.csv", "json": "lesions.json"}
    existing = [str(out / n) for n in names.values() if (out / n).exists()]
    if existing and not overwrite:  # before any is written: lesions.csv went in, then followups.csv was refused
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass overwrite=True to replace")
    lesion_rows, fu_rows = [], []
    for ev in evolutions:
        for f in ev.followups:
            fu_rows.append({"case_id": ev.case_id, "patient_id": ev.patient_id, **f.summary()})
            for c in f.changes:
                lesion_rows.append({
                    "case_id": ev.case_id, "patient_id": ev.patient_id, "followup": c.followup, "index": c.index,
                    "kind": c.kind, "merged": c.merged, "added_volume_mm3": c.added_volume_mm3,
                    "lesion_volume_mm3": c.lesion_volume_mm3, "centre_x_mm": c.centre_mm[0],
                    "centre_y_mm": c.centre_mm[1], "centre_z_mm": c.centre_mm[2],
                    "centre_voxel": " ".join(str(v) for v in c.centre_voxel),
                    "earlier_lesions": ";".join(str(i) for i in c.earlier_lesions),
                    "components": c.components, "note": c.note,
                })
    first = evolutions[0]
    doc = {
        "rules": RULES,
        "options": {"min_volume_mm3": first.min_volume_mm3, "connectivity": first.connectivity},
        "cases": [ev.to_dict() for ev in evolutions],
    }
    les_text = csv_text(lesion_rows, _LESION_COLUMNS, decimals=3)
    fu_text = csv_text(fu_rows, _FOLLOWUP_COLUMNS, decimals=3)
    return {
        "lesions_csv": atomic_write(out / names["lesions_csv"], lambda fh: fh.write(les_text), overwrite=overwrite),
        "followups_csv": atomic_write(out / names["followups_csv"], lambda fh: fh.write(fu_text), overwrite=overwrite),
        "json": atomic_write_json(out / names["json"], doc, overwrite=overwrite),
    }
