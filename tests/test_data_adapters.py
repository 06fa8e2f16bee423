"""MSSEG-2 and UCSF-ALPTDG adapters on fake files written in each dataset's own layout."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from longiseg.data import load_case, msseg2_cases, ucsf_altpd_cases

SHAPE = (12, 14, 10)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.2, 1.0])), str(path))


def _write_msseg2(root: Path, ids: list[str], gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    ext = ".nii.gz" if gz else ".nii"
    for i, pid in enumerate(ids):
        for t in (1, 2):
            _save(root / pid / f"flair_time0{t}_on_middle_space{ext}", rng.random(SHAPE).astype(np.float32))
        gt = np.zeros(SHAPE, dtype=np.uint8)
        if i == 0:
            gt[4:6, 4:6, 4:6] = 1
        _save(root / pid / f"ground_truth{ext}", gt)
        _save(root / pid / f"ground_truth_expert1{ext}", gt)


def test_msseg2_layout(tmp_path: Path) -> None:
    _write_msseg2(tmp_path, ["013", "015"])
    _write_msseg2(tmp_path, ["016"], gz=False)  # uncompressed files are found as well
    (tmp_path / "notes").mkdir()  # unrelated folders are ignored
    sources = msseg2_cases(tmp_path)
    assert [s.case_id for s in sources] == ["013", "015", "016"]
    case = load_case(sources[0])
    assert case.images.shape == (2, 1, *SHAPE) and case.modalities == ("flair",)
    assert case.baseline_mask.sum() == 0 and not case.baseline_annotated
    assert case.progression_masks.sum() == 8 and case.has_progression
    assert case.spacing == pytest.approx((1.0, 1.0, 1.2))
    assert not load_case(sources[1]).has_progression
    assert sources[2].image_files[0][0].name == "flair_time01_on_middle_space.nii"
    expert = msseg2_cases(tmp_path, annotation="ground_truth_expert1")
    assert expert[0].progression_masks[0].files[0].name == "ground_truth_expert1.nii.gz"


def test_msseg2_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no case folders"):
        msseg2_cases(tmp_path)
    with pytest.raises(ValueError, match="annotation must be"):
        msseg2_cases(tmp_path, annotation="labels")
    _write_msseg2(tmp_path, ["013"])
    (tmp_path / "013" / "ground_truth.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="ground_truth.nii.gz"):
        load_case(msseg2_cases(tmp_path)[0])


def _write_ucsf(root: Path, pid: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    for t in (1, 2):
        for m in ("flair", "t1", "t1ce", "t2", "t1ce-t1"):
            _save(root / pid / f"{pid}_time{t}_{m}.nii.gz", rng.random(SHAPE).astype(np.float32))
    seg1 = np.zeros(SHAPE, dtype=np.float32)  # the release stores labels as float
    seg2 = np.zeros(SHAPE, dtype=np.float32)
    seg1[2:4, 2:4, 2:4] = 2  # SNFH
    seg1[3, 3, 3] = 3  # ET
    seg1[8, 8, 8] = 4  # resection cavity
    seg2[2:5, 2:4, 2:4] = 2  # SNFH grows by 4 voxels
    seg2[8, 8, 8] = 4
    _save(root / pid / f"{pid}_time1_seg.nii.gz", seg1)
    _save(root / pid / f"{pid}_time2_seg.nii.gz", seg2)
    change = np.zeros(SHAPE, dtype=np.float32)
    change[4, 2:4, 2:4] = 1
    change[0, 0, 0] = 2
    _save(root / pid / f"{pid}_flair_subtraction_seg.nii.gz", change)
    _save(root / pid / f"{pid}_t1ce_subtraction_seg.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    return seg1, seg2


def test_ucsf_layout_whole_tumour_and_difference(tmp_path: Path) -> None:
    seg1, seg2 = _write_ucsf(tmp_path, "100001")
    (src,) = ucsf_altpd_cases(tmp_path)
    case = load_case(src)
    assert case.images.shape == (2, 4, *SHAPE) and case.modalities == ("flair", "t1", "t1ce", "t2")
    np.testing.assert_array_equal(case.baseline_mask, (seg1 > 0).astype(np.uint8))  # union of labels
    np.testing.assert_array_equal(case.progression_masks[0], ((seg1 > 0) ^ (seg2 > 0)).astype(np.uint8))
    assert case.progression_masks.sum() == 4 and case.has_progression

    wt = load_case(ucsf_altpd_cases(tmp_path, tumour_labels=(1, 2, 3))[0])
    assert wt.baseline_mask.sum() == 8  # cavity excluded
    growth = load_case(ucsf_altpd_cases(tmp_path, difference="growth")[0])
    assert growth.progression_masks.sum() == 4
    sub = load_case(ucsf_altpd_cases(tmp_path, difference="flair_subtraction", modalities=("flair",))[0])
    assert sub.progression_masks.sum() == 5 and sub.images.shape[1] == 1  # increase and decrease
    stable = load_case(ucsf_altpd_cases(tmp_path, difference="t1ce_subtraction")[0])
    assert not stable.has_progression


def test_ucsf_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no case folders"):
        ucsf_altpd_cases(tmp_path)
    _write_ucsf(tmp_path, "100002")
    with pytest.raises(ValueError, match="difference must be one of"):
        ucsf_altpd_cases(tmp_path, difference="xor")
    with pytest.raises(ValueError, match="modalities must name"):
        ucsf_altpd_cases(tmp_path, modalities=())
    (tmp_path / "100002" / "100002_time2_seg.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="100002_time2_seg"):
        load_case(ucsf_altpd_cases(tmp_path)[0])
    seg = np.zeros(SHAPE, dtype=np.float32)
    seg[1, 1, 1] = 1.5
    _save(tmp_path / "100002" / "100002_time2_seg.nii.gz", seg)
    with pytest.raises(ValueError, match="non-integer"):
        load_case(ucsf_altpd_cases(tmp_path)[0])
