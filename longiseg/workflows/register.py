"""``longiseg register RAW OUT``: raw longitudinal scans into the library layout (SimpleITK).

See :mod:`longiseg.registration.cohort` for what is registered, written and checked. Exit status 0 when
every case passed, 1 when a case or follow-up failed (listed on stderr and in ``OUT/registration.csv``),
2 for unusable arguments or a missing SimpleITK.
"""

from __future__ import annotations

import argparse
import re
import sys

from longiseg.utils.io import expand_home
from longiseg.utils.masks import format_spacing

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``register`` sub-command to the ``longiseg`` parser."""
    p = sub.add_parser("register", help="register follow-ups to the baseline and resample raw scans into the "
                                        "library layout (SimpleITK; pip install 'longiseg[register]')")
    p.add_argument("raw", type=expand_home,
                   help="folder of raw cases: CASE/t{k}_{modality}.nii.gz (k = 0 the baseline), optional "
                               "CASE/baseline_mask, brain_mask (baseline space) and progression_t{k} (follow-up "
                               "k's space) .nii.gz; any grid per file")
    p.add_argument("out", type=expand_home, help="output folder (library layout, transforms and QC)")
    p.add_argument("--transform", choices=("rigid", "affine"), default="rigid", help="default rigid")
    p.add_argument("--reference-modality", dest="reference_modality", default="flair",
                   help="modality registered between sessions (default flair)")
    p.add_argument("--register-modalities", dest="register_modalities", action="store_true",
                   help="register the other modalities to their session's reference instead of following it")
    p.add_argument("--spacing", type=float, default=None, help="isotropic output voxel size in mm "
                                                               "(default: the baseline's grid)")
    p.add_argument("--interpolation", choices=("linear", "bspline"), default="linear", help="images (default linear)")
    p.add_argument("--mask-interpolation", dest="mask_interpolation", choices=("linear", "nearest"),
                   default="linear", help="masks: linear then >= 0.5 (default) or nearest neighbour")
    p.add_argument("--progression-space", dest="progression_space", choices=("followup", "baseline"),
                   default="followup", help="space of the raw progression_t{k} masks: their follow-up's "
                                            "(default; moved with it) or the baseline's (already aligned)")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction first")
    p.add_argument("--min-correlation", dest="min_correlation", type=float, default=0.7,
                   help="QC: fail a follow-up below this correlation with the baseline where it images the "
                        "brain, after registration, at the pair's common resolution (default 0.7)")
    p.add_argument("--min-coverage", dest="min_coverage", type=float, default=0.5,
                   help="QC: fail a follow-up that, registered, images less of the baseline's brain than this "
                        "share (default 0.5; lower it for follow-ups with a smaller field of view by design)")
    p.add_argument("--max-translation", dest="max_translation", type=float, default=50.0,
                   help="QC: largest plausible motion of the brain centre in scanner coordinates, mm (default "
                        "50; raise it for sessions whose scanner coordinates differ more)")
    p.add_argument("--max-rotation", dest="max_rotation", type=float, default=30.0,
                   help="QC: largest plausible rotation, degrees (default 30)")
    p.add_argument("--keep-failed", dest="keep_failed", action="store_true",
                   help="also write the images of failed cases (still reported)")
    p.add_argument("--no-qc-figures", dest="no_qc_figures", action="store_true", help="no checkerboard PNGs")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output folder: the registered cases' folders, the summaries and "
                        "manifest.json are replaced, other files kept")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


#: RegistrationOptions' argument names and the options of ``longiseg register`` that set them.
_OPTIONS = {
    "reference_modality": "--reference-modality", "spacing": "--spacing", "min_correlation": "--min-correlation",
    "min_coverage": "--min-coverage", "max_translation_mm": "--max-translation", "max_rotation_deg": "--max-rotation",
}


def run(args: argparse.Namespace) -> int:
    """Handler of ``longiseg register``: the options, the output folder and the output grids are checked (by
    :func:`~longiseg.registration.cohort.register_folder`) before any case is read."""
    from longiseg.registration.cohort import RegistrationOptions, register_folder
    from longiseg.registration.pairwise import PairOptions

    try:
        opts = RegistrationOptions(
            reference_modality=args.reference_modality, pair=PairOptions(transform=args.transform),
            register_modalities=args.register_modalities, n4=args.n4, spacing=args.spacing,
            interpolation=args.interpolation, mask_interpolation=args.mask_interpolation,
            min_correlation=args.min_correlation, min_coverage=args.min_coverage,
            max_translation_mm=args.max_translation, max_rotation_deg=args.max_rotation,
            qc_figures=not args.no_qc_figures, keep_failed=args.keep_failed, progression_space=args.progression_space)
    except (TypeError, ValueError) as err:  # the message in the options' names, as the user typed them
        message = str(err).replace(", or None", "")  # None: the option left out
        for name, option in _OPTIONS.items():
            message = re.sub(rf"\b{name}\b", option, message)
        raise type(err)(message) from None
    results = register_folder(args.raw, args.out, opts, overwrite=args.overwrite, progress=not args.no_progress)
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"longiseg register: case {r.case_id} failed: {r.error}", file=sys.stderr)
        for q in r.followups:
            if q["status"] != "ok":
                failed += 1
                print(f"longiseg register: case {r.case_id} follow-up {q['followup']} failed: "
                      f"{'; '.join(q['reasons'])}", file=sys.stderr)
            else:
                print(f"{r.case_id} t{q['followup']}: correlation {q['before']['correlation']:.3f} -> "
                      f"{q['after']['correlation']:.3f}"
                      f" ({q['checked']['correlation']:.3f} at {format_spacing(q['checked_voxel_mm'])} "
                      f"mm), moved {q['motion']['translation_mm']:.1f} mm / "
                      f"{q['motion']['rotation_deg']:.1f} deg ({q['seconds']} s)")
    kept = (" (written anyway, --keep-failed: a follow-up whose registration raised as the scanner placed it, "
            "one that failed the quality check with its transform)") if failed and args.keep_failed else ""
    print(f"wrote {sum(r.written for r in results)} of {len(results)} case(s) into {args.out}"
          + (f"; {failed} failure(s){kept}, see {args.out}/registration.csv" if failed else ""))
    return 1 if failed else 0
