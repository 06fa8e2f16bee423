"""Convert MSSEG-2, UCSF-ALTPD or any cohort in the library layout into ``OUT/train`` and ``OUT/test``.

The public datasets are read with the adapters of :mod:`longiseg.data.adapters`, every case is loaded and
checked (:func:`longiseg.data.load_case`: shapes, affines, binary masks, finite intensities) and written in
the library layout (:func:`longiseg.data.save_case`) with a ``manifest.json`` per split. Patients are split
into training and test sets stratified by progression (seeded), or by an explicit list of test ids.

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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from longiseg.data import (
    CaseSource,
    Manifest,
    ManifestEntry,
    find_cases,
    load_case,
    msseg2_cases,
    save_case,
    ucsf_altpd_cases,
    write_manifest,
)
from longiseg.data.layout import MANIFEST_JSON
from longiseg.data.split import split_by_patient


def select_cases(sources: Sequence[CaseSource], max_cases: int | None, seed: int) -> list[CaseSource]:
    """A seeded random subset of ``max_cases`` cases (all of them when ``None``), in the original order."""
    if max_cases is None or max_cases >= len(sources):
        return list(sources)
    if max_cases < 1:
        raise ValueError(f"max_cases must be >= 1, got {max_cases}")
    keep = set(np.random.default_rng(seed).choice(len(sources), size=max_cases, replace=False).tolist())
    return [s for i, s in enumerate(sources) if i in keep]


def split_cases(sources: Sequence[CaseSource], *, test_fraction: float, seed: int,
                test_ids: Sequence[str] | None = None) -> tuple[list[CaseSource], list[CaseSource]]:
    """``(train, test)``: by patient and stratified by progression, or with the given test case ids.

    Raises:
        ValueError: a test id is not among the cases, or the split leaves no training case.
    """
    if test_ids:
        wanted = set(test_ids)
        unknown = wanted - {s.case_id for s in sources}
        if unknown:
            raise ValueError(f"test ids not found among the cases: {sorted(unknown)}")
        return [s for s in sources if s.case_id not in wanted], [s for s in sources if s.case_id in wanted]
    return split_by_patient(sources, test_fraction, seed)


def write_split(sources: Sequence[CaseSource], out_dir: Path, *, overwrite: bool = False) -> Manifest:
    """Load, check and write every case into ``out_dir`` (library layout) with its ``manifest.json``."""
    entries = []
    for src in tqdm(sources, desc=f"writing {out_dir.name}", unit="case"):
        case = load_case(src)
        save_case(case, out_dir, overwrite=overwrite)
        entries.append(ManifestEntry(case.case_id, case.patient_id, case.num_timepoints, case.has_progression,
                                     case.baseline_annotated))
    manifest = Manifest(tuple(sources[0].modalities), tuple(entries))
    write_manifest(out_dir / MANIFEST_JSON, manifest)
    return manifest


def convert(sources: Sequence[CaseSource], out: Path, *, test_fraction: float = 0.2, seed: int = 0,
            max_cases: int | None = None, test_ids: Sequence[str] | None = None,
            drop_stable_test: bool = False, overwrite: bool = False) -> dict[str, Manifest]:
    """Select, split and write ``sources`` into ``out/train`` and ``out/test``.

    Args:
        sources: cases from an adapter or :func:`~longiseg.data.find_cases`.
        out: destination folder.
        test_fraction: share of patients in the test split (stratified by progression).
        seed: seed of the subset and the split.
        max_cases: keep a random subset of this many cases first.
        test_ids: explicit test case ids (overrides ``test_fraction``).
        drop_stable_test: leave test cases without progression out (MSSEG-2 challenge protocol).
        overwrite: replace existing files.

    Returns:
        ``{"train": manifest, "test": manifest}`` (``"test"`` absent when the test split is empty).
    """
    if not sources:
        raise ValueError("no cases to convert")
    chosen = select_cases(sources, max_cases, seed)
    train, test = split_cases(chosen, test_fraction=test_fraction, seed=seed, test_ids=test_ids)
    if drop_stable_test:
        test = [s for s in test if s.progression_flag()]
    written = {"train": write_split(train, out / "train", overwrite=overwrite)}
    if test:
        written["test"] = write_split(test, out / "test", overwrite=overwrite)
    for name, manifest in written.items():
        n_prog = sum(bool(e.progression) for e in manifest.cases)
        print(f"{out / name}: {len(manifest.cases)} cases ({n_prog} with progression, "
              f"{len(manifest.cases) - n_prog} without), modalities {list(manifest.modalities)}")
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
        p.add_argument("out", help="destination; OUT/train and OUT/test are written")
        p.add_argument("--test-fraction", type=float, default=0.2, help="share of patients for testing (0.2)")
        p.add_argument("--test-ids", nargs="+", default=None, help="explicit test case ids")
        p.add_argument("--max-cases", type=int, default=None, help="random subset of this many cases first")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true", help="replace existing files")
        if name == "msseg2":
            p.add_argument("--annotation", default="ground_truth",
                           help="ground_truth (consensus, default) or ground_truth_expert1..4")
            p.add_argument("--drop-stable-test", action="store_true",
                           help="leave test patients without new lesions out (challenge protocol)")
        if name == "ucsf":
            p.add_argument("--modalities", nargs="+", default=["flair", "t1", "t1ce", "t2"])
            p.add_argument("--tumour-labels", type=int, nargs="+", default=None,
                           help="labels of the whole tumour (default: all, i.e. 1 2 3 4 incl. cavity)")
            p.add_argument("--difference", default="symmetric",
                           choices=["symmetric", "growth", "flair_subtraction", "t1ce_subtraction"],
                           help="how the binary progression (difference) mask is built")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    if args.dataset == "msseg2":
        sources = msseg2_cases(args.source, annotation=args.annotation)
    elif args.dataset == "ucsf":
        sources = ucsf_altpd_cases(args.source, modalities=args.modalities, tumour_labels=args.tumour_labels,
                                   difference=args.difference)
    else:
        sources = find_cases(args.source)
    convert(sources, Path(args.out), test_fraction=args.test_fraction, seed=args.seed,
            max_cases=args.max_cases, test_ids=args.test_ids,
            drop_stable_test=getattr(args, "drop_stable_test", False), overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
