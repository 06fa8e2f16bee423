"""Convert MSSEG-2, UCSF-ALTPD or any cohort in the library layout into ``OUT/train`` and ``OUT/test``.

The public datasets are read with the adapters of :mod:`longiseg.data.adapters`. Every case is checked
first (:func:`longiseg.data.validate_cases`: shapes, affines, binary masks, finite intensities, and label
maps holding only the labels their dataset defines), all problems are reported together
and nothing is written while any case is invalid. Then the cases are written in the library layout
(:func:`longiseg.data.save_case`) with a ``manifest.json`` per split, into a temporary folder beside OUT that
replaces OUT as a whole at the end: OUT holds the complete conversion or stays as it was (``--overwrite``
replaces an earlier conversion entirely, so no stale case or file survives). OUT must not be, lie inside or
hold the source folder. Patients are split into training and test sets stratified by progression (seeded),
or by an explicit list of test case ids (with all other cases of their patients).

Usage::

    # MSSEG-2 training split (40 patients): 32 for training, 8 for testing (SegMaST paper, section 3)
    python examples/convert_datasets.py msseg2 MSSEG2/training data/msseg2 --test-fraction 0.2

    # UCSF-ALTPD: 200 random patients, 25 of them for testing
    python examples/convert_datasets.py ucsf UCSF_POSTOP_GLIOMA_DATASET_FINAL_v1.0 data/ucsf_altpd \\
        --max-cases 200 --test-fraction 0.125

    # your own cohort (or the demo cohort) already in the library layout: split it only
    python examples/convert_datasets.py layout my_cohort data/ms_inhouse --test-fraction 0.2

Nothing is downloaded: get the datasets from their providers first (see examples/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from longiseg.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated
from longiseg.data import (
    CaseSource,
    Manifest,
    find_cases,
    load_case,
    manifest_from_cases,
    msseg2_cases,
    save_case,
    ucsf_altpd_cases,
    validate_cases,
    write_manifest,
)
from longiseg.data.cohort import modality_mismatches
from longiseg.data.layout import MANIFEST_JSON
from longiseg.data.split import split_by_patient
from longiseg.utils.io import atomic_directory, check_output_folder, check_separate_folders
from longiseg.utils.validation import check_bool

#: The entries a conversion writes into OUT; ``--overwrite`` replaces only a folder holding nothing else.
SPLITS = ("train", "test")


def select_cases(sources: Sequence[CaseSource], max_cases: int | None, seed: int) -> list[CaseSource]:
    """A seeded random subset of ``max_cases`` cases (all of them when ``None``), in the original order."""
    if max_cases is not None and (isinstance(max_cases, bool) or not isinstance(max_cases, Integral) or max_cases < 1):
        raise ValueError(f"max_cases (--max-cases) must be an integer >= 1, got {max_cases!r}")
    if max_cases is None or max_cases >= len(sources):
        return list(sources)
    keep = set(np.random.default_rng(seed).choice(len(sources), size=max_cases, replace=False).tolist())
    return [s for i, s in enumerate(sources) if i in keep]


def _check_test_fraction(test_fraction: float) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real):
        raise TypeError(f"test_fraction (--test-fraction) must be a number, got {type(test_fraction).__name__}")
    if not (math.isfinite(test_fraction) and 0.0 <= test_fraction < 1.0):
        raise ValueError(f"test_fraction (--test-fraction) must be in [0, 1) (a share of the patients; some must "
                         f"stay for training), got {test_fraction}")
    return float(test_fraction)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed (--seed) must be an integer >= 0, got {seed!r}")
    return int(seed)


def _split_by_ids(sources: Sequence[CaseSource], test_ids: Sequence[str]
                  ) -> tuple[list[CaseSource], list[CaseSource]]:
    if isinstance(test_ids, (str, bytes)):
        raise TypeError(f"test_ids (--test-ids) must be a list of case ids, got the string {test_ids!r}")
    wanted = [str(i) for i in test_ids]
    if not wanted:
        raise ValueError("test_ids (--test-ids) must name at least one case")
    unknown = sorted(set(wanted) - {s.case_id for s in sources})
    if unknown:
        raise ValueError(f"test_ids (--test-ids): case(s) {unknown} not found among the {len(sources)} cases")
    patients = {s.patient_id for s in sources if s.case_id in wanted}
    train = [s for s in sources if s.patient_id not in patients]
    test = [s for s in sources if s.patient_id in patients]
    if not train:
        raise ValueError(f"test_ids (--test-ids) {wanted} hold every patient of the {len(sources)} cases "
                         f"({len(patients)} patients); leave at least one patient for training")
    added = sorted(s.case_id for s in test if s.case_id not in wanted)
    if added:
        print(f"--test-ids: also testing case(s) {added}, of the same patients as the named cases "
              "(a patient's cases stay on one side of the split)")
    return train, test


def split_cases(sources: Sequence[CaseSource], *, test_fraction: float, seed: int,
                test_ids: Sequence[str] | None = None) -> tuple[list[CaseSource], list[CaseSource]]:
    """``(train, test)`` by patient: stratified by progression (seeded), or around the given test case ids.

    With ``test_ids`` every case of a named case's patient is tested too, so no patient lies on both sides.
    Without, :func:`~longiseg.data.split.split_by_patient` draws ``test_fraction`` of the patients per
    progression stratum (the progression flags are read from the masks where not known).

    Raises:
        TypeError: ``test_ids`` is a single string, or ``test_fraction`` not a number.
        ValueError: naming the option: a test id is not among the cases; the test ids or ``test_fraction``
            leave no patient for training; ``test_fraction`` is outside ``[0, 1)``.
    """
    if test_ids is not None:
        return _split_by_ids(sources, test_ids)
    fraction = _check_test_fraction(test_fraction)
    _check_seed(seed)
    # flags first, so that a mask that cannot be read is reported as such and not as a bad fraction
    flagged = [s if s.has_progression is not None else dataclasses.replace(s, has_progression=s.progression_flag())
               for s in sources]
    try:
        train, test = split_by_patient(flagged, fraction, seed, split_name="test", fraction_name="--test-fraction")
    except ValueError as exc:
        if "leaves no training case" not in str(exc):  # another cause (a case id twice): as split_by_patient says
            raise
        n_patients = len({s.patient_id for s in flagged})
        n_prog = len({s.patient_id for s in flagged if s.has_progression})
        raise ValueError(
            f"test_fraction (--test-fraction) {fraction} puts all {n_patients} patients ({n_prog} with progression, "
            f"{n_patients - n_prog} without) into the test split, leaving none for training; lower --test-fraction"
        ) from exc
    return train, test


def write_split(sources: Sequence[CaseSource], out_dir: Path) -> Manifest:
    """Load, check and write every case into the new folder ``out_dir`` (library layout) with its ``manifest.json``.

    Raises:
        ValueError: ``sources`` is empty.
        FileExistsError: a case's files exist already in ``out_dir``.
    """
    if not sources:
        raise ValueError(f"no cases to write into {out_dir}")
    entries = []
    modalities = tuple(sources[0].modalities)
    for src in tqdm(sources, desc=f"writing {out_dir.name}", unit="case"):
        case = load_case(src)
        save_case(case, out_dir)
        entries.extend(manifest_from_cases([case]).cases)
    manifest = Manifest(modalities, tuple(entries))
    write_manifest(out_dir / MANIFEST_JSON, manifest)
    return manifest


def _case_folders(sources: Sequence[CaseSource]) -> dict[str, Path]:
    """The folders every case reads from, named for messages."""
    folders: dict[Path, str] = {}
    for s in sources:
        for f in s.all_files():
            folders.setdefault(Path(f).parent, f"case {s.case_id!r}")
    return {f"{name} folder": folder for folder, name in folders.items()}


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """OUT must be new, empty, or (with ``overwrite``) an earlier conversion holding only ``train/``, ``test/``."""
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"OUT {out} already exists and is not empty; pass --overwrite (overwrite=True) to "
                              "replace it as a whole")
    foreign = [name for name in entries if name not in SPLITS]
    if foreign:
        raise ValueError(f"OUT {out} holds {foreign}, which a conversion does not write (only {list(SPLITS)}); "
                         "--overwrite replaces OUT as a whole, so move them away or choose another OUT")


def _validate(sources: Sequence[CaseSource]) -> None:
    """Check every case (files, grids, values, label maps) and raise one error listing all."""
    problems = validate_cases(sources)
    for cid, message in modality_mismatches(sources)[2].items():  # one cohort, one channel order
        problems.setdefault(cid, []).append(f"ValueError: {message}")
    if problems:
        lines = "\n".join(f"  {cid}: {msg}" for cid, msgs in problems.items() for msg in msgs)
        raise ValueError(f"{len(problems)} of {len(sources)} cases are invalid; nothing was written. Fix or "
                         f"remove them:\n{lines}")


def convert(sources: Sequence[CaseSource], out: Path, *, test_fraction: float = 0.2, seed: int = 0,
            max_cases: int | None = None, test_ids: Sequence[str] | None = None,
            drop_stable_test: bool = False, overwrite: bool = False) -> dict[str, Manifest]:
    """Select, check, split and write ``sources`` into ``out/train`` and ``out/test``.

    Everything is checked before anything is written; ``out`` is then built in a temporary folder beside it
    and renamed into place, so it holds the whole conversion or stays as it was.

    Args:
        sources: cases from an adapter or :func:`~longiseg.data.find_cases`.
        out: destination folder.
        test_fraction: share of patients in the test split (stratified by progression), in ``[0, 1)``.
        seed: seed of the subset and the split.
        max_cases: keep a random subset of this many cases first.
        test_ids: explicit test case ids (overrides ``test_fraction``); their patients' other cases are
            tested too.
        drop_stable_test: leave test cases without progression out (MSSEG-2 challenge protocol).
        overwrite: replace an existing ``out`` (an earlier conversion: only ``train/`` and ``test/``) as a whole.

    Returns:
        ``{"train": manifest, "test": manifest}`` (``"test"`` absent when the test split is empty).

    Raises:
        FileExistsError: ``out`` exists, is not empty and ``overwrite`` is off.
        NotADirectoryError, PermissionError: ``out`` cannot become a writable folder.
        ValueError: no cases; ``out`` is, lies inside or holds a case folder, or holds entries other than
            ``train/`` and ``test/``; a bad option (named); or invalid cases (all listed; nothing written).
    """
    if isinstance(sources, (str, bytes, os.PathLike)) or not isinstance(sources, Iterable):
        raise TypeError(f"sources must be a list of CaseSource (from an adapter or find_cases), got "
                        f"{type(sources).__name__}")
    sources = list(sources)  # (an iterator was used up by the first check that read it)
    bad = next((s for s in sources if not isinstance(s, CaseSource)), None)
    if bad is not None:
        raise TypeError(f"sources must hold CaseSource objects (from an adapter or find_cases), got "
                        f"{type(bad).__name__} {bad!r:.80}")
    overwrite = check_bool("overwrite", overwrite)  # a string such as "no" counted as true
    drop_stable_test = check_bool("drop_stable_test", drop_stable_test)
    if not sources:
        raise ValueError("no cases to convert")
    out = check_output_folder(out, "OUT")
    built = out.resolve() if out.is_symlink() else out.absolute()  # a link: the folder it names is replaced
    if out.exists() and not os.access(built.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"OUT {out}: its folder {built.parent} is not writable, but OUT is built "
                              "beside itself and renamed into place")
    check_separate_folders(out, "OUT", _case_folders(sources))
    _check_replaceable(out, overwrite)
    _check_seed(seed)
    if test_ids is None:
        _check_test_fraction(test_fraction)
    chosen = select_cases(sources, max_cases, seed)
    if test_ids is not None:  # split by the ids before any voxel is read: it needs none
        if max_cases is not None and not isinstance(test_ids, (str, bytes)):
            dropped = sorted({str(i) for i in test_ids} & {s.case_id for s in sources} - {s.case_id for s in chosen})
            if dropped:
                raise ValueError(f"test_ids (--test-ids): case(s) {dropped} are not among the {len(chosen)} cases "
                                 "drawn by --max-cases; leave --max-cases out or name drawn cases")
        train, test = split_cases(chosen, test_fraction=test_fraction, seed=seed, test_ids=test_ids)
    _validate(chosen)
    if test_ids is None:  # stratified by progression: read from the (now checked) masks
        train, test = split_cases(chosen, test_fraction=test_fraction, seed=seed)
    if drop_stable_test:
        test = [s for s in test if s.progression_flag()]
    written: dict[str, Manifest] = {}
    with atomic_directory(out, overwrite=out.exists(), follow_link=True) as tmp:
        written["train"] = write_split(train, tmp / "train")
        if test:
            written["test"] = write_split(test, tmp / "test")
    for name, manifest in written.items():
        n_prog = sum(bool(e.progression) for e in manifest.cases)
        print(f"{out / name}: {len(manifest.cases)} cases ({n_prog} with progression, "
              f"{len(manifest.cases) - n_prog} without), modalities {list(manifest.modalities)}")
    if "test" not in written:
        print(f"{out / 'test'}: no test cases (the test split is empty), not written")
    return written


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="dataset", required=True)
    for name, help_text in (("msseg2", "MSSEG-2 training split (FLAIR, new-lesion masks)"),
                            ("ucsf", "UCSF-ALTPD / UCSF-ALPTDG glioma release folder"),
                            ("layout", "a cohort already in the library layout (split only)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("source", help="dataset folder")
        p.add_argument("out", help="destination, apart from the source; OUT/train and OUT/test are written")
        p.add_argument("--test-fraction", type=float, default=0.2,
                       help="share of patients for testing, in [0, 1) (0.2)")
        p.add_argument("--test-ids", nargs="+", default=None,
                       help="explicit test case ids (their patients' other cases are tested too)")
        p.add_argument("--max-cases", type=int, default=None, help="random subset of this many cases first")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing OUT (an earlier conversion) as a whole")
        if name == "msseg2":
            p.add_argument("--annotation", default="ground_truth",
                           help="ground_truth (consensus, default) or ground_truth_expert1..4")
            p.add_argument("--drop-stable-test", action="store_true",
                           help="leave test patients without new lesions out (challenge protocol)")
        if name == "ucsf":
            p.add_argument("--modalities", nargs="+", default=["flair", "t1", "t1ce", "t2"],
                           help="image channels, any of flair t1 t1ce t2 t1ce-t1 (default: flair t1 t1ce t2)")
            p.add_argument("--tumour-labels", type=int, nargs="+", default=None,
                           help="labels of the whole tumour, any of 1 NETC, 2 SNFH, 3 ET, 4 resection cavity "
                                "(default: all four)")
            p.add_argument("--difference", default="symmetric",
                           choices=["symmetric", "growth", "flair_subtraction", "t1ce_subtraction"],
                           help="how the binary progression (difference) mask is built")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Convert as the command line says; what was given wrong (a missing SOURCE, an unknown id, an existing OUT,
    ``--test-fraction`` outside ``[0, 1)``) raises ``ValueError``/``OSError`` naming the option."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if not Path(args.source).is_dir():
        raise FileNotFoundError(f"SOURCE {args.source} is not a folder")
    check_separate_folders(out, "OUT", {"SOURCE": args.source})  # --overwrite would replace the input
    check_output_folder(out, "OUT")
    if args.dataset == "msseg2":
        sources = msseg2_cases(args.source, annotation=args.annotation)
    elif args.dataset == "ucsf":
        sources = ucsf_altpd_cases(args.source, modalities=args.modalities, tumour_labels=args.tumour_labels,
                                   difference=args.difference)
    else:
        sources = find_cases(args.source)
    convert(sources, out, test_fraction=args.test_fraction, seed=args.seed,
            max_cases=args.max_cases, test_ids=args.test_ids,
            drop_stable_test=getattr(args, "drop_stable_test", False), overwrite=args.overwrite)
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signum}")


def cli(argv: Sequence[str] | None = None) -> int:
    """``python examples/convert_datasets.py ...``: :func:`main` with its errors as one usage line (exit 2); Ctrl-C
    and SIGTERM (a scheduler's time limit) end it with one line (130, 143) after the temporary OUT is removed (SIGTERM
    ended the process at once and left it, possibly gigabytes, beside OUT)."""
    handled = (threading.current_thread() is threading.main_thread()  # (signals are set in the main thread only)
               and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if handled:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return main(argv)
    except (ValueError, OSError) as err:
        build_parser().error(" ".join(str(err).split()))
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"{build_parser().prog}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if handled:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    raise SystemExit(cli())
