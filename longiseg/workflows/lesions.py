"""``longiseg lesions DIR --out REPORT``: the lesion-evolution read-out of a folder of masks.

``DIR`` holds predictions (``longiseg predict``) or references in the library layout. Writes
``lesions.csv`` (one row per new/enlarging lesion), ``followups.csv`` (counts, volumes, MRI activity per
follow-up), ``lesions.json``, ``figures/`` and a self-contained ``report.html``. Rules:
:mod:`longiseg.metrics.evolution`. The report folder is written as a whole: with ``--overwrite`` it ends
up holding this run's files and none of an earlier report's (:data:`REPORT_FILES`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from longiseg.data import layout
from longiseg.data.cohort import cohort_patient_ids
from longiseg.metrics.evolution import CaseEvolution, evolution_folder, write_evolution_tables
from longiseg.utils.io import (
    PathLike,
    check_output_folder,
    check_separate_folders,
    expand_home,
    folder_is_empty,
)
from longiseg.utils.logging import get_logger
from longiseg.utils.plotting import require_matplotlib
from longiseg.utils.report_folder import report_folder
from longiseg.utils.validation import check_bool, check_path

_LOG = get_logger(__name__)

__all__ = ["REPORT_FILES", "run_lesion_report", "add_parser", "run"]


#: The files of a lesion report (relative paths, ``fnmatch`` patterns): the only files of a report folder
#: that writing a report replaces or removes (figures: ``CASE_volume.png``, ``CASE_fu{k}_lesion{i}_{kind}.png``).
REPORT_FILES = ("lesions.csv", "followups.csv", "lesions.json", "report.html", "figures/*_volume.png",
                "figures/*_fu*_lesion*_*.png")


def _check_modality_name(modality: object, name: str) -> None:
    """Refuse a ``modality`` (named ``name``) that is neither ``None`` nor a channel name a file name can hold."""
    if modality is None:
        return
    if not isinstance(modality, str):
        raise TypeError(f"{name} must be a modality name such as 'flair', got {type(modality).__name__} {modality!r}")
    try:
        layout.image_filename(0, modality)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def run_lesion_report(
    mask_dir: PathLike,
    out_dir: PathLike,
    *,
    images: PathLike | None = None,
    modality: str | None = None,
    min_volume_mm3: float = 3.0,
    connectivity: int = 26,
    figures: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[list[CaseEvolution], dict[str, Path]]:
    """Compute the lesion evolution of every case of ``mask_dir`` and write tables, figures and the report.

    The report is written as a whole (:func:`~longiseg.utils.report_folder.report_folder`): with ``overwrite``
    the folder afterwards holds this run's files and none of an earlier report's (:data:`REPORT_FILES`;
    ``report.html`` and ``figures/`` only with ``figures``), while files that are not report files are left
    alone. On an error nothing in ``out_dir`` changes.

    Args:
        mask_dir: predictions or references in the library layout.
        out_dir: report folder (created; must be empty unless ``overwrite``).
        images: cohort folder with the images for the montages (default: ``mask_dir``; without images there, the
            report has no montages, with a warning); where ``mask_dir`` has no manifest (predictions), the patient
            ids of ``images``' manifest group the cases, as in a report on the references (without ``images``,
            those the predictions' records name: :func:`~longiseg.data.cohort.find_mask_cases`).
        modality: image shown in the montages (default ``flair`` where a case has it, else its first modality in
            alphabetical order).
        min_volume_mm3: smallest lesion and smallest growth counted (see
            :func:`~longiseg.metrics.evolution.lesion_evolution`).
        connectivity: 6, 18 or 26.
        figures: also write the figures and ``report.html`` (needs matplotlib).
        overwrite: replace existing report files.
        progress: tqdm progress bars.

    Returns:
        ``(evolutions, files)`` with the paths written.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is ``False``, or (without
            ``overwrite``) another process wrote a report there while this one was being written.
        NotADirectoryError: ``out_dir`` is or lies under a file.
        PermissionError: ``out_dir`` is not writable, or (``overwrite``) a folder of the earlier report in it is
            not (before anything is written; see :func:`~longiseg.utils.report_folder.report_folder`).
        FileNotFoundError: ``images`` is given and is not a folder.
        ValueError: ``out_dir`` is, lies inside or holds ``mask_dir`` or ``images``; a ``modality`` no file name
            can hold, or one given with ``figures=False``.
        TypeError: ``images`` not a path, ``modality`` neither ``None`` nor a str, a flag not a bool.
    """
    _check_modality_name(modality, "modality")
    figures = check_bool("figures", figures)
    if modality is not None and not figures:  # not a choice silently without effect
        raise ValueError(f"modality={modality!r} chooses the image of the montages, which figures=False leaves out: "
                         "give one of them")
    if figures:  # before the cases are read
        require_matplotlib("the figures and report.html", "pass figures=False (--no-figures) for the tables only")
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    out = check_output_folder(out_dir, "out")
    if images is not None:
        images = check_path("images", images)
    if images is not None and not Path(images).is_dir():  # not a report without the montages asked for
        raise FileNotFoundError(f"images {images} is not a folder (give the cohort folder with the images)")
    check_separate_folders(out, "out", {"mask": mask_dir, "images": images})
    if out.exists() and not folder_is_empty(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    evolutions = evolution_folder(mask_dir, min_volume_mm3=min_volume_mm3, connectivity=connectivity,
                                  progress=progress)
    if images is not None and not cohort_patient_ids(mask_dir):  # predictions: the cohort's manifest names patients
        patients = cohort_patient_ids(images)
        evolutions = [dataclasses.replace(ev, patient_id=patients.get(ev.case_id, ev.patient_id)) for ev in evolutions]
    if figures and images is None and not any(layout.scan_images(Path(mask_dir) / ev.case_id).get(0)
                                              for ev in evolutions):
        _LOG.warning("%s holds no images (CASE/t0_*.nii.gz): the report has no montages; give the cohort folder "
                     "with the images (images=, --images)", mask_dir)
    if figures and images is not None and not any(  # montages asked for, and no case has its images there
            (Path(images) / ev.case_id).is_dir() and layout.scan_images(Path(images) / ev.case_id).get(0)
            for ev in evolutions):
        raise FileNotFoundError(f"images (--images) {images} holds the images (CASE/t0_*.nii.gz) of none of the "
                                f"{len(evolutions)} case(s): give the cohort folder with the images, or leave it out")
    with report_folder(out, REPORT_FILES, overwrite=overwrite) as stage:  # refuses one written meanwhile
        staged = write_evolution_tables(evolutions, stage, overwrite=True)
        if figures:
            from longiseg.reports.lesion_report import write_lesion_report

            staged["html"] = write_lesion_report(evolutions, mask_dir, stage, images_root=images,
                                                 modality=modality, overwrite=True, progress=progress)
        files = {name: out / Path(path).relative_to(stage) for name, path in staged.items()}
    return evolutions, files


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``lesions`` sub-command to the ``longiseg`` parser."""
    p = sub.add_parser("lesions", help="new/enlarging lesions, lesion volumes and MRI activity per follow-up "
                                       "(CSV, JSON, figures, report.html)")
    p.add_argument("masks", metavar="MASKS", type=expand_home,
                   help="folder of predictions or references (library layout)")
    p.add_argument("--out", "--output", dest="out", type=expand_home, required=True, help="report folder")
    p.add_argument("--images", type=expand_home, default=None,
                   help="cohort folder with the images for the montages (default: MASKS)")
    p.add_argument("--modality", default=None,
                   help="image shown in the montages (default: flair where a case has it, else its first modality "
                        "in alphabetical order)")
    p.add_argument("--min-volume", "--min-lesion-volume", dest="min_volume", type=float, default=3.0,
                   help="smallest lesion and smallest growth counted, mm^3 (default 3)")
    p.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26, help="default 26")
    p.add_argument("--no-figures", action="store_true", help="tables only (no matplotlib)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``longiseg lesions``: prints one line per follow-up and the files written."""
    # the options' own names in the messages (run_lesion_report checks the same with its argument names)
    if not Path(args.masks).is_dir():
        raise FileNotFoundError(f"MASKS {args.masks} is not a folder")
    if args.images is not None and not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images} is not a folder (give the cohort folder with the images)")
    _check_modality_name(args.modality, "--modality")
    if args.modality is not None and args.no_figures:
        raise ValueError(f"--modality {args.modality} chooses the image of the montages, which --no-figures leaves "
                         "out: give one of them")
    if not (math.isfinite(args.min_volume) and args.min_volume >= 0):
        raise ValueError(f"--min-volume must be a volume in mm^3 >= 0, got {args.min_volume}")
    out = check_output_folder(args.out, "--out")
    check_separate_folders(out, "--out", {"MASKS": args.masks, "--images": args.images})
    if out.exists() and not folder_is_empty(out) and not args.overwrite:
        raise FileExistsError(f"--out {args.out} exists and is not empty; pass --overwrite to replace the report "
                              "in it (other files stay)")
    evolutions, files = run_lesion_report(
        args.masks, args.out, images=args.images, modality=args.modality, min_volume_mm3=args.min_volume,
        connectivity=args.connectivity, figures=not args.no_figures, overwrite=args.overwrite,
        progress=not args.no_progress)
    for ev in evolutions:
        for f in ev.followups:
            merged = f" ({f.merged} merge{'s' if f.merged != 1 else ''})" if f.merged else ""
            print(f"{ev.case_id} FU{f.followup}: {f.new} new, {f.enlarging} enlarging{merged}, "
                  f"volume {f.previous_volume_mm3:.0f} -> {f.lesion_volume_mm3:.0f} mm3, "
                  f"MRI activity: {'yes' if f.active else 'no'}")
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0
