"""Splitting a cohort by patient: the validation split of training and the held-out test split.

Both keep every patient's cases on one side and stratify by progression, so each side has progressing and
stable patients.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from longiseg.data.cohort import cohort_manifest, find_cases
from longiseg.data.layout import MANIFEST_JSON
from longiseg.data.manifest import Manifest, ManifestEntry, write_manifest
from longiseg.data.sources import CaseSource
from longiseg.utils.io import apply_umask, atomic_directories, check_separate_folders
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import (
    check_instance,
    check_path,
    check_positive_int,
    check_probability,
    check_seed,
    check_sequence,
)

__all__ = ["check_test_split", "split_by_patient", "write_test_split"]

_LOG = get_logger("longiseg.data.split")


def split_by_patient(cases: Sequence[CaseSource], val_fraction: float, seed: int = 0, *,
                     split_name: str = "validation", fraction_name: str = "data.val_fraction"
                     ) -> tuple[list[CaseSource], list[CaseSource]]:
    """Split cases into train and validation sets by patient, stratified by progression.

    Each stratum (progressing, stable patients) gives ``round(val_fraction * n)`` of its ``n`` patients to
    validation. When that rounds to none while ``val_fraction > 0``, the stratum gives one patient, unless it
    has only one: that patient stays in training (which keeps the stratum) and a warning is logged that the
    validation set has no patient of that stratum (or is empty).

    Args:
        cases: case sources (their ``patient_id`` groups cases of one patient).
        val_fraction: share of patients in the validation set, in ``[0, 1)``.
        seed: seed of the shuffle, an int ``>= 0``.
        split_name: what the messages call the held-out side (e.g. ``"test"`` for a test split).
        fraction_name: what the messages call ``val_fraction`` (the setting or option the user gave).

    Returns:
        ``(train_cases, val_cases)``, each in the order of ``cases`` (:func:`~longiseg.data.cohort.find_cases`
        lists a cohort's cases in case-id order, whatever the manifest's row order); every patient's cases land
        on one side. Which patients are held out does not depend on the order of ``cases``.

    Raises:
        TypeError: ``cases`` is not a list or tuple of :class:`~longiseg.data.sources.CaseSource`,
            ``val_fraction`` is not a number or ``seed`` not an int.
        ValueError: no cases, two cases with the same case id, ``val_fraction`` outside ``[0, 1)``, a negative
            ``seed``, or a split that leaves no training case.
    """
    check_sequence("cases", cases, CaseSource, "a CaseSource")
    if not cases:
        raise ValueError("cases is empty: there are no cases to split")
    check_probability("val_fraction", val_fraction, include_one=False)
    seed = check_seed("seed", seed)
    check_instance("split_name", split_name, str, "a str such as 'test'")
    check_instance("fraction_name", fraction_name, str, "a str such as '--test-fraction'")
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise ValueError(f"case id {c.case_id!r} appears more than once in cases; case ids must be unique")
        seen.add(c.case_id)
    patients: dict[str, list[CaseSource]] = {}
    for c in cases:
        patients.setdefault(c.patient_id or c.case_id, []).append(c)
    rng = np.random.default_rng(seed)
    val_ids: set[str] = set()
    left_out: list[str] = []
    for flag in (True, False):
        group = sorted(p for p, cs in patients.items() if any(c.progression_flag() for c in cs) == flag)
        rng.shuffle(group)
        n = int(round(val_fraction * len(group)))
        if val_fraction > 0 and n == 0:
            if len(group) == 1:
                left_out.append(f"{'progressing' if flag else 'stable'} patient {group[0]!r}")
            else:
                n = 1
        val_ids.update(group[:n])
    train = [c for c in cases if (c.patient_id or c.case_id) not in val_ids]  # in the order of cases
    val = [c for c in cases if (c.patient_id or c.case_id) in val_ids]
    if not train:
        raise ValueError(f"the {split_name} split leaves no training case; lower {fraction_name}")
    if left_out:
        what = "is empty" if not val else "has no patient of that stratum"
        _LOG.warning("%s=%s gives no patient of a stratum of one to the %s split: the only %s %s in training; the "
                     "%s set %s", fraction_name, val_fraction, split_name, " and the only ".join(left_out),
                     "stay" if len(left_out) > 1 else "stays", split_name, what)
    return train, val


def _check_num_test(num_test: object) -> int:
    """``num_test`` as an ``int`` if it is an int (NumPy's too, not bool) ``>= 2``."""
    return check_positive_int("num_test", num_test, minimum=2)


def check_test_split(num_test: int, num_progressing: int, num_stable: int, cohort: str) -> None:
    """Refuse a test split of ``num_test`` patients (half progressing, rounded down) that a cohort of
    ``num_progressing`` progressing and ``num_stable`` stable patients cannot give while keeping some of each for
    training (:func:`write_test_split`'s rule; the demo checks it before it generates its cohort).

    Raises:
        TypeError: ``num_test`` is not an int (NumPy's are; bool is not).
        ValueError: ``num_test`` < 2, or too few patients of a kind; naming ``cohort`` (how the message calls it)
            and both counts.
    """
    num_test = _check_num_test(num_test)
    n_prog = num_test // 2
    if num_progressing <= n_prog or num_stable <= num_test - n_prog:
        raise ValueError(f"num_test={num_test} needs more than {n_prog} progressing and {num_test - n_prog} stable "
                         f"patients (to keep some for training); {cohort} has {num_progressing} and {num_stable}")


def write_test_split(cohort: str | Path, out_dir: str | Path, num_test: int, *,
                     overwrite: bool = False) -> dict[str, list[str]]:
    """Hold out ``num_test`` patients of a cohort: copy its cases into ``OUT/train`` and ``OUT/test``.

    The test set takes the first ``num_test // 2`` progressing patients and the first remaining stable
    patients in patient-id order (``sorted``; so the split is the same on every machine and whatever the order of
    the manifest's rows), with all of each patient's cases; each side gets its own manifest, its cases in case-id
    order. A patient progresses when one of its cases does (the manifest's flag, or
    its progression masks where the manifest has none).

    Args:
        cohort: cohort folder (its ``manifest.json`` or ``manifest.csv`` gives the patients; without one each case
            is its own patient). The copies get the permissions of the umask, not the source files'.
        out_dir: where ``train/`` and ``test/`` are written (each folder as a whole).
        num_test: held-out patients, an int >= 2 (one progressing, one stable).
        overwrite: replace existing ``train/`` and ``test/`` folders.

    Returns:
        ``{"train": [...case ids], "test": [...case ids]}``.

    Raises:
        FileNotFoundError: ``cohort`` holds no case.
        FileExistsError: ``train/`` or ``test/`` exists and ``overwrite`` is off.
        TypeError: ``num_test`` is not an int (NumPy's are; bool is not).
        ValueError: ``num_test`` < 2, too few progressing/stable patients for it and a training set, or an
            output folder over the cohort.
    """
    cohort, out = check_path("cohort", cohort), check_path("out_dir", out_dir)
    num_test = _check_num_test(num_test)
    for name in ("train", "test"):
        check_separate_folders(out / name, f"{name} folder", {"cohort": cohort})
    sources = {c.case_id: c for c in find_cases(cohort)}
    manifest = cohort_manifest(cohort)  # manifest.json or manifest.csv, as find_cases reads them
    if manifest is None:  # each case its own patient, as find_cases takes them
        first = next(iter(sources.values()))
        manifest = Manifest(first.modalities, tuple(ManifestEntry(s.case_id, s.patient_id or s.case_id,
                                                                  len(s.image_files), None) for s in sources.values()))
    entries_by_id = sorted(manifest.cases, key=lambda e: e.case_id)  # the manifest's row order changes nothing
    patients: dict[str, list] = {}
    for e in sorted(entries_by_id, key=lambda e: e.patient_id):
        patients.setdefault(e.patient_id, []).append(e)
    progressing = {p: any(sources[e.case_id].progression_flag() for e in entries) for p, entries in patients.items()}
    prog = [p for p in patients if progressing[p]]
    stable = [p for p in patients if not progressing[p]]
    check_test_split(num_test, len(prog), len(stable), str(cohort))
    n_prog = num_test // 2
    held_out = set(prog[:n_prog] + stable[: num_test - n_prog])
    sides = {"test": [e for e in entries_by_id if e.patient_id in held_out],
             "train": [e for e in entries_by_id if e.patient_id not in held_out]}
    for name in sides:
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name} already exists; pass overwrite=True to replace it")
    # published together: an interruption while they replace earlier ones puts the earlier ones back (a new test/
    # beside an old train/ could hold a patient of the old training set)
    with atomic_directories([out / name for name in sides], overwrite=overwrite) as temporaries:
        for tmp, entries in zip(temporaries, sides.values(), strict=True):
            for e in entries:
                shutil.copytree(cohort / e.case_id, tmp / e.case_id, copy_function=shutil.copyfile)
                for path in [tmp / e.case_id, *(tmp / e.case_id).rglob("*")]:  # copytree copies folder modes too
                    apply_umask(path)  # permissions of the umask (077 keeps patients' scans private), not the source's
            write_manifest(tmp / MANIFEST_JSON, Manifest(manifest.modalities, tuple(entries)))
    return {name: sorted(e.case_id for e in entries) for name, entries in sides.items()}
