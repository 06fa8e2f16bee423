"""Patient-level splits and the manifest fields they rest on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from longiseg.data.cohort import find_cases
from longiseg.data.demo_cohort import generate_demo_cohort
from longiseg.data.manifest import read_manifest
from longiseg.data.sources import CaseSource, MaskSpec
from longiseg.data.split import split_by_patient, write_test_split


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_cohort(tmp_path_factory.mktemp("c") / "cohort", num_patients=8, spacing=4, progress=False)


def _regroup(cohort: Path, dest: Path, drop_flags: bool) -> dict[str, str]:
    """A copy of the cohort in which two progressing or two stable cases form one patient (two visits each)."""
    import shutil

    shutil.copytree(cohort, dest)
    data = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    patient_of, seen = {}, {True: 0, False: 0}
    for case in data["cases"]:
        flag = bool(case["progression"])
        case["patient_id"] = patient_of[case["case_id"]] = f"{'P' if flag else 'S'}{seen[flag] // 2}"
        seen[flag] += 1
        if drop_flags:
            case.pop("progression")
    (dest / "manifest.json").write_text(json.dumps(data))
    return patient_of


@pytest.mark.parametrize("drop_flags", [False, True])
def test_write_test_split_holds_out_whole_patients(cohort: Path, tmp_path: Path, drop_flags: bool) -> None:
    """Every patient's cases land on one side; without flags in the manifest progression is read from the
    masks (it was counted as none)."""
    patient_of = _regroup(cohort, tmp_path / "cohort", drop_flags)
    split = write_test_split(tmp_path / "cohort", tmp_path / "out", 2)
    test_patients = {patient_of[c] for c in split["test"]}
    train_patients = {patient_of[c] for c in split["train"]}
    assert len(test_patients) == 2 and not test_patients & train_patients
    assert sorted(split["test"] + split["train"]) == sorted(patient_of)
    for side in ("train", "test"):
        assert [e.case_id for e in read_manifest(tmp_path / "out" / side / "manifest.json").cases] == sorted(
            split[side], key=list(patient_of).index)
    flags = {c.case_id: c.progression_flag() for c in find_cases(tmp_path / "cohort")}
    assert any(flags[c] for c in split["test"]) and not all(flags[c] for c in split["test"])


def test_an_interrupted_test_split_keeps_the_earlier_train_and_test(cohort: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after test/ was replaced and before train/ was: a new test/ beside an old train/ (a patient in
    both); the two are published as a set."""
    import os
    import shutil

    out = tmp_path / "out"
    write_test_split(cohort, out, 2)
    other = tmp_path / "other"
    shutil.copytree(cohort, other)
    data = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
    for case in data["cases"]:  # other patient ids: another split
        case["patient_id"] = f"x{7 - int(case['case_id'][-1])}"
    (other / "manifest.json").write_text(json.dumps(data))
    before = {str(p.relative_to(out)): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}
    real, calls = os.replace, []

    def replace(src: object, dst: object) -> None:
        if Path(str(src)).parent == out:
            calls.append(dst)
            if len(calls) == 3:  # test/ aside, the new test/ in, train/ aside: interrupted here
                raise KeyboardInterrupt
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_test_split(other, out, 2, overwrite=True)
    monkeypatch.undo()
    after = {str(p.relative_to(out)): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}
    assert after == before


def test_write_test_split_refuses_an_output_over_the_cohort(cohort: Path) -> None:
    with pytest.raises(ValueError, match="train folder .* lies inside the cohort folder"):
        write_test_split(cohort, cohort, 2, overwrite=True)


def _csv_cohort(cohort: Path, dest: Path, text: str, encoding: str = "utf-8") -> Path:
    import shutil

    shutil.copytree(cohort, dest)
    (dest / "manifest.json").unlink()
    (dest / "manifest.csv").write_bytes(text.encode(encoding))
    return dest


def test_csv_manifest_with_spaces_and_a_byte_order_mark(cohort: Path, tmp_path: Path) -> None:
    """A spreadsheet export ("case_id, patient_id", UTF-8 with BOM) keeps its patient ids."""
    ids = [e.case_id for e in read_manifest(cohort / "manifest.json").cases]
    rows = "".join(f"{cid}, P{i // 2}, 2\n" for i, cid in enumerate(ids))
    dest = _csv_cohort(cohort, tmp_path / "c", "case_id, patient_id, num_timepoints\n" + rows, "utf-8-sig")
    cases = find_cases(dest)
    assert [c.patient_id for c in cases] == [f"P{i // 2}" for i in range(len(ids))]
    train, val = split_by_patient(cases, 0.3, seed=1)
    assert not {c.patient_id for c in train} & {c.patient_id for c in val}


def test_write_test_split_reads_the_cohort_as_find_cases_does(cohort: Path, tmp_path: Path) -> None:
    """A cohort with a manifest.csv (which find_cases reads) failed with "manifest.json does not exist", one
    without a manifest as well; the copies had the source files' permissions, whatever the umask (a 077 umask
    keeps patients' scans private)."""
    import os
    import shutil
    import stat

    ids = [e.case_id for e in read_manifest(cohort / "manifest.json").cases]
    patient = {cid: "P0" for cid in ids[:2]} | {cid: f"Q{i}" for i, cid in enumerate(ids[2:])}
    csv = _csv_cohort(cohort, tmp_path / "csv", "case_id,patient_id\n" + "".join(
        f"{cid},{patient[cid]}\n" for cid in ids))  # the first two cases: one patient
    split = write_test_split(csv, tmp_path / "out-csv", 2)
    held = {patient[c] for c in split["test"]}
    assert {patient[c] for c in split["train"]}.isdisjoint(held) and len(held) == 2
    assert {c.patient_id for c in find_cases(tmp_path / "out-csv" / "test")} == held
    bare = tmp_path / "bare"
    shutil.copytree(cohort, bare)
    (bare / "manifest.json").unlink()
    split = write_test_split(bare, tmp_path / "out-bare", 2)  # each case its own patient
    assert len(split["test"]) == 2 and sorted(split["test"] + split["train"]) == sorted(ids)
    assert [c.case_id for c in find_cases(tmp_path / "out-bare" / "test")] == split["test"]
    old = os.umask(0o077)
    try:
        write_test_split(cohort, tmp_path / "private", 2)
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "private").rglob("*")}
    assert modes <= {0o600, 0o700} and 0o600 in modes, sorted(map(oct, modes))


@pytest.mark.parametrize(("text", "match"), [
    ("Case_ID,Patient_ID\na,P1\n", r"its header names the columns \['Case_ID', 'Patient_ID'\] but no 'case_id'"),
    ("case_id;patient_id\na;P1\n", r"columns \['case_id;patient_id'\] but no 'case_id'.*separated by commas"),
    ("case_id,patient_id\na,P1,2\n", r"manifest\.csv line 2: 3 values but the header names 2 columns"),
])
def test_csv_manifest_headers_and_rows_are_named(tmp_path: Path, text: str, match: str) -> None:
    """A header without case_id was reported as "line 2: every case needs a non-empty 'case_id'", a row with a
    value too many as "unknown field(s) ['']"."""
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_manifest(tmp_path / "manifest.csv")


@pytest.mark.parametrize(("cases", "match"), [
    ([{"case_id": "a", "patientid": "P1"}], r"unknown field\(s\) \['patientid'\]"),
    ([{"case_id": "a", "patient_id": [1]}], "patient_id must be a string or an integer"),
])
def test_manifest_rows_are_checked(tmp_path: Path, cases: list, match: str) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": cases}))
    with pytest.raises(ValueError, match=match):
        read_manifest(tmp_path / "manifest.json")


def test_manifest_values_read_as_written(tmp_path: Path) -> None:
    """A numeric patient id 0 is patient "0" (it became the case id); absent modalities may be null."""
    (tmp_path / "manifest.json").write_text(json.dumps({"modalities": None, "cases": [
        {"case_id": "a", "patient_id": 0}, {"case_id": "b", "patient_id": 0}, {"case_id": "c"}]}))
    m = read_manifest(tmp_path / "manifest.json")
    assert [e.patient_id for e in m.cases] == ["0", "0", "c"] and m.modalities == ()
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="manifest .* is not UTF-8 text"):
        read_manifest(tmp_path / "manifest.json")


def _source(case_id: str, patient_id: str, progression: bool) -> CaseSource:
    """A case source whose files need not exist (the split reads only ids and the given flag)."""
    return CaseSource(case_id, ("flair",), ((Path("a.nii.gz"),), (Path("b.nii.gz"),)), MaskSpec((Path("m.nii.gz"),)),
                      (MaskSpec((Path("p.nii.gz"),)),), patient_id=patient_id, has_progression=progression)


def test_a_stratum_of_one_patient_stays_in_training_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """One progressing and one stable patient gave an empty validation set without a word."""
    cases = [_source("a", "a", True), _source("b", "b", False)]
    with caplog.at_level(logging.WARNING, logger="longiseg.data.split"):
        train, val = split_by_patient(cases, 0.5)
    assert [c.case_id for c in train] == ["a", "b"] and val == []
    assert "the validation set is empty" in caplog.text and "progressing patient 'a'" in caplog.text
    caplog.clear()
    cases += [_source("c", "c", False), _source("d", "d", False)]  # stable stratum of 3: one to validation
    with caplog.at_level(logging.WARNING, logger="longiseg.data.split"):
        train, val = split_by_patient(cases, 0.2)
    assert len(val) == 1 and not val[0].has_progression and "a" in {c.case_id for c in train}
    assert "has no patient of that stratum" in caplog.text


def test_split_by_patient_arguments_are_checked() -> None:
    cases = [_source("a", "a", True), _source("b", "b", False), _source("c", "c", False)]
    with pytest.raises(TypeError, match="val_fraction"):
        split_by_patient(cases, "0.2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        split_by_patient(cases, 0.2, seed="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"cases\[0\] must be a CaseSource"):
        split_by_patient(["a", "b"], 0.2)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="there are no cases"):
        split_by_patient([], 0.2)
    with pytest.raises(ValueError, match="case id 'a' appears more than once"):
        split_by_patient([_source("a", "p1", True), _source("a", "p2", False), cases[2]], 0.5)


def test_the_manifest_row_order_changes_no_case_order(cohort: Path, tmp_path: Path) -> None:
    """Reversing a manifest's rows (the same cases) changed training's case order (the sampler draws sample ``i``
    from case ``i % N``, so other cases were drawn), the test split and evaluate's rows; every command now lists a
    cohort's cases in case-id order."""
    import shutil

    from longiseg.data.cohort import find_mask_cases
    from longiseg.metrics.evaluate import evaluate_folder

    reversed_ = tmp_path / "reversed"
    shutil.copytree(cohort, reversed_)
    data = json.loads((reversed_ / "manifest.json").read_text(encoding="utf-8"))
    data["cases"].reverse()
    for i, case in enumerate(data["cases"]):  # patient ids in the opposite order of the case ids
        case["patient_id"] = f"P{i}"
    (reversed_ / "manifest.json").write_text(json.dumps(data))
    ids = sorted(c["case_id"] for c in data["cases"])
    assert [c["case_id"] for c in data["cases"]] != ids
    forward = tmp_path / "forward"
    shutil.copytree(reversed_, forward)
    data["cases"].reverse()
    (forward / "manifest.json").write_text(json.dumps(data))

    orders = {}
    for name, root in (("reversed", reversed_), ("forward", forward)):
        cases = find_cases(root)
        train, val = split_by_patient(cases, 0.3, seed=3)
        result = evaluate_folder(root, root, progress=False)
        orders[name] = ([c.case_id for c in cases], [c.case_id for c in train], [c.case_id for c in val],
                        [e.case_id for e in find_mask_cases(root)], [r["case_id"] for r in result.table.rows],
                        write_test_split(root, tmp_path / f"split-{name}", 2))
    assert orders["reversed"] == orders["forward"]
    assert orders["forward"][0] == orders["forward"][3] == ids
    assert orders["forward"][4] == [cid for cid in ids for _ in range(2)]  # baseline and follow-up rows


def test_split_by_patient_keeps_the_order_of_cases() -> None:
    """Both sides list their cases in the order of ``cases`` (as documented), not grouped by patient: a patient
    with several sessions interleaved with another's."""
    cases = [_source("s1", "P2", False), _source("s2", "P1", False), _source("s3", "P2", False),
             _source("s4", "P3", True), _source("s5", "P4", True)]
    train, val = split_by_patient(cases, 0.0)
    assert [c.case_id for c in train] == ["s1", "s2", "s3", "s4", "s5"] and val == []
    train, val = split_by_patient(cases, 0.5, seed=0)
    for side in (train, val):
        ids = [c.case_id for c in side]
        assert ids == sorted(ids)
