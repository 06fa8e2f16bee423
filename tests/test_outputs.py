"""Outputs are complete or absent, readable by colleagues (the umask decides), and never accumulate debris."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inferers_predict import Voxelwise, _affine, _images, _inferer, _write_case

from longiseg.data.cohort import find_mask_cases
from longiseg.data.predictions import PREDICTION_RECORD, prediction_complete, read_prediction, save_prediction
from longiseg.inferers.predict import predict_folder
from longiseg.utils.io import (
    atomic_directories,
    atomic_directory,
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    remove_stale_temporaries,
    temporary_prefix,
)
from longiseg.utils.nifti import atomic_save_nifti


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _voxels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                        (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "c.pt")
        atomic_save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "m.nii.gz")
        with atomic_directory(tmp_path / "folder") as tmp:
            atomic_write_json(tmp / "inner.json", {})
    finally:
        os.umask(old)
    for name in ("a.json", "c.pt", "m.nii.gz", "folder/inner.json"):
        assert _mode(tmp_path / name) == file_mode, name
    assert _mode(tmp_path / "folder") == dir_mode


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path, umask_022: None) -> None:
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".m.nii.gz.{dead}.abc123.tmp.nii.gz"
    stale_dir = tmp_path / f".case.{dead}.xyz.tmp"
    live = tmp_path / f".m.nii.gz.{alive}.def456.tmp.nii.gz"
    other = tmp_path / ".m.nii.gz.notes"  # not a temporary: never touched
    for p in (stale, live, other):
        p.write_text("x")
    stale_dir.mkdir()
    atomic_save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "m.nii.gz")
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "case") == [stale_dir]


def test_outputs_with_names_near_the_file_systems_limit_are_written(tmp_path: Path) -> None:
    """A temporary's name adds about 40 bytes to its destination's: an output folder or file named with 240
    characters (255 bytes is the usual limit) failed with 'File name too long' after all the work."""
    folder, file, dotted = "o" * 240, "j" * 240 + ".json", ".".join(["x" * 20] * 11) + ".nii.gz"
    with atomic_directory(tmp_path / folder) as tmp:
        (tmp / "a.txt").write_text("x")
    atomic_write_json(tmp_path / file, {"a": 1})
    atomic_save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / dotted)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder, file, dotted])
    assert (tmp_path / folder / "a.txt").read_text() == "x"
    # a killed writer's temporary of the long name is recognised as such, and a live one kept
    dead, alive = _dead_pid(), os.getpid()
    prefix = temporary_prefix(tmp_path / folder)
    assert len(prefix.encode()) < 200
    stale = tmp_path / (prefix.replace(f".{alive}-", f".{dead}-") + "abc123.tmp")
    live = tmp_path / (prefix + "def456.tmp")
    neighbour = temporary_prefix(tmp_path / ("o" * 239 + "p"))  # same first 140 bytes, another name
    other = tmp_path / (neighbour.replace(f".{alive}-", f".{dead}-") + "ghi789.tmp")
    for p in (stale, live, other):
        p.mkdir()
    assert remove_stale_temporaries(tmp_path / folder) == [stale]
    assert live.exists() and other.exists()


def test_a_folder_holding_only_a_killed_writers_temporaries_counts_as_empty(tmp_path: Path) -> None:
    """A run killed while writing into a new output folder leaves a hidden temporary there: the rerun must not be
    refused as "exists and is not empty" (ls shows nothing). A live writer's temporary and any other file count."""
    from longiseg.utils.io import folder_is_empty

    out = tmp_path / "out"
    out.mkdir()
    assert folder_is_empty(out)
    (out / f".cohort.{_dead_pid()}.a1zin0kb.tmp").mkdir()
    assert folder_is_empty(out)
    (out / f".cohort.{os.getpid()}.q2w3e4r5.tmp").mkdir()
    assert not folder_is_empty(out)
    os.rmdir(out / f".cohort.{os.getpid()}.q2w3e4r5.tmp")
    (out / ".notes").write_text("mine")
    assert not folder_is_empty(out)
    with pytest.raises(NotADirectoryError):
        folder_is_empty(out / ".notes")


def test_folders_keep_the_setgid_bit_of_a_shared_project_folder(tmp_path: Path, umask_022: None) -> None:
    shared = tmp_path / "project"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    if not shared.stat().st_mode & stat.S_ISGID:
        pytest.skip("this file system does not keep the setgid bit")
    with atomic_directory(shared / "results") as tmp:
        atomic_write_json(tmp / "summary.json", {})
    plain = shared / "by_hand"
    plain.mkdir()
    assert (shared / "results").stat().st_mode & stat.S_ISGID == plain.stat().st_mode & stat.S_ISGID
    assert _mode(shared / "results") & 0o777 == 0o755  # the umask still applies


def _other_group() -> int | None:
    """A group this process may give its files other than the one they get (None where it has only one; root may
    give any)."""
    if os.geteuid() == 0:
        return os.getegid() + 1
    return next((g for g in os.getgroups() if g != os.getegid()), None)


def test_a_replaced_folder_keeps_its_mode_group_and_setgid_bit(tmp_path: Path, umask_022: None) -> None:
    # evaluate and lesions replace their report folder as a whole: a folder made beforehand for a team (chmod 2770,
    # chgrp) became 0755 with the process's group, and its files lost the group
    out = tmp_path / "report"
    out.mkdir()
    group = _other_group()
    if group is not None:
        os.chown(out, -1, group)
    os.chmod(out, 0o2770)
    if not out.stat().st_mode & stat.S_ISGID:
        pytest.skip("this file system does not keep the setgid bit")
    for _ in range(2):  # made by hand, then replaced by an earlier report
        with atomic_directory(out, overwrite=True) as tmp:
            assert _mode(tmp) & 0o077 == 0  # private while it is written
            atomic_write_json(tmp / "summary.json", {})
        assert _mode(out) == 0o2770
        if group is not None:
            assert out.stat().st_gid == group and (out / "summary.json").stat().st_gid == group
    assert _mode(out / "summary.json") == 0o644  # files: the umask's mode


def test_a_file_rewritten_in_place_keeps_its_mode_and_group(tmp_path: Path, umask_022: None) -> None:
    # longiseg tune rewrote a checkpoint with the process's group (and set the private mode only after the rename)
    path = tmp_path / "ck.pt"
    atomic_torch_save({"a": 1}, path)
    os.chmod(path, 0o600)
    group = _other_group()
    if group is not None:
        os.chown(path, -1, group)
    atomic_torch_save({"a": 2}, path, keep_permissions=True)
    assert _mode(path) == 0o600 and torch.load(path, weights_only=True) == {"a": 2}
    assert group is None or path.stat().st_gid == group
    atomic_torch_save({"a": 3}, path)  # without keep_permissions: the umask's mode, as for any new output
    assert _mode(path) == 0o644
    with pytest.raises(TypeError, match="keep_permissions must be a bool"):
        with atomic_path(path, keep_permissions="yes"):  # type: ignore[arg-type]
            pass


def test_failed_writes_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_atomic_directory_removes_the_parents_it_created(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "kept" / "a" / "b" / "out") as tmp:
        (tmp / "x").write_text("half")
        raise KeyboardInterrupt
    assert list((tmp_path / "kept").iterdir()) == []  # a and b were created for it: gone; kept existed: kept
    # a parent that received other content meanwhile stays, and so do the ones above it
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "kept" / "a" / "b" / "out") as tmp:
        (tmp_path / "kept" / "a" / "note.txt").write_text("the user's")
        raise RuntimeError("killed")
    assert sorted(p.name for p in (tmp_path / "kept" / "a").iterdir()) == ["note.txt"]


def test_atomic_directory_replaces_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_directory(tmp_path / "d"):
        pass
    with atomic_directory(tmp_path / "d", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_a_linked_output_folder_has_the_folder_it_names_replaced(tmp_path: Path) -> None:
    """An output folder that is a symbolic link (e.g. to a project share) was replaced by a real folder: the link was
    gone and the folder it named kept the old outputs, stale, for everyone else reading it."""
    (tmp_path / "share" / "run").mkdir(parents=True)
    (tmp_path / "share" / "run" / "old.txt").write_text("old")
    (tmp_path / "link").symlink_to(tmp_path / "share" / "run")
    with atomic_directory(tmp_path / "link", overwrite=True, follow_link=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in (tmp_path / "share" / "run").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "share"]
    assert sorted(p.name for p in (tmp_path / "share").iterdir()) == ["run"]
    (tmp_path / "file").write_text("")
    for target in ("missing", "file"):
        (tmp_path / f"to_{target}").symlink_to(tmp_path / target)
        with pytest.raises(NotADirectoryError, match=f"to_{target} is a symbolic link to .*{target}, which is not a "
                                                     "folder"), atomic_directory(tmp_path / f"to_{target}",
                                                                                 follow_link=True):
            pass
    assert not (tmp_path / "missing").exists()
    # a case folder linked into another cohort (a subset) is replaced as a link: the other cohort stays
    (tmp_path / "full" / "p1").mkdir(parents=True)
    (tmp_path / "full" / "p1" / "t0.txt").write_text("full")
    (tmp_path / "subset").mkdir()
    (tmp_path / "subset" / "p1").symlink_to(tmp_path / "full" / "p1")
    with atomic_directory(tmp_path / "subset" / "p1", overwrite=True) as tmp:
        (tmp / "t0.txt").write_text("subset")
    assert not (tmp_path / "subset" / "p1").is_symlink()
    assert (tmp_path / "full" / "p1" / "t0.txt").read_text() == "full"


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_an_interruption_between_the_two_renames_puts_the_old_folder_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: type[BaseException]) -> None:
    """Ctrl-C (or SIGTERM, raised as a KeyboardInterrupt) after the old folder was moved aside and before the new
    one was renamed in: the old folder was removed together with the new one (only an OSError put it back)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    real, calls = os.replace, []

    def replace(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the new folder's rename
            raise failure("interrupted")
        real(src, dst)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(failure, match="interrupted"), atomic_directory(tmp_path / "d", overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert len(calls) == 3  # moved aside, failed, moved back
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary left
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["old.txt"]
    assert (tmp_path / "d" / "old.txt").read_text() == "old"


def test_atomic_directories_checks_its_folders(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="paths must be a sequence of folders, got PosixPath|WindowsPath"):
        with atomic_directories(tmp_path / "a"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="each once"), atomic_directories([tmp_path / "a", tmp_path / "x" / ".." / "a"]):
        pass
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_directories([tmp_path / "a", tmp_path / "b"]):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    with atomic_directories([tmp_path / "a", tmp_path / "b"], overwrite=True) as (a, b):
        (a / "x.txt").write_text("a")
        (b / "y.txt").write_text("b")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/x.txt", "b", "b/y.txt"]


def _not_writable(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Make ``os.access`` answer that ``folders`` are not writable, as a ``chmod a-w`` does for any user but root."""
    real = os.access
    locked = {os.path.abspath(f) for f in folders}

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if mode & os.W_OK and os.path.abspath(os.fspath(path)) in locked:  # type: ignore[arg-type]
            return False
        return real(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)


def test_atomic_directory_refuses_an_old_folder_it_could_not_remove_before_the_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only sub-folder of an old output (``chmod -R a-w``, then the top folder made writable again): the old
    folder was moved aside and its files left in a temporary beside it (``longiseg lesions --overwrite``), or the
    move failed after the work with a bare ``[Errno 13]`` (``predict``/``register --overwrite``)."""
    old = tmp_path / "d"
    (old / "figures").mkdir(parents=True)
    (old / "figures" / "a.png").write_text("old")
    worked = []
    for locked in (old / "figures", old):
        with monkeypatch.context() as m:
            _not_writable(m, locked)
            with pytest.raises(PermissionError, match=f"cannot replace {old}: {locked} is not writable; nothing was "
                                                      "deleted"), atomic_directory(old, overwrite=True):
                worked.append(True)
    assert not worked and [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary either
    assert (old / "figures" / "a.png").read_text() == "old"
    if os.geteuid() != 0:  # the real thing (root may delete anything)
        (old / "figures").chmod(0o555)
        try:
            with pytest.raises(PermissionError, match="figures is not writable"), atomic_directory(old, overwrite=True):
                worked.append(True)
        finally:
            (old / "figures").chmod(0o755)
        assert not worked and [p.name for p in tmp_path.iterdir()] == ["d"]
    with atomic_directory(old, overwrite=True) as tmp:  # writable again: replaced
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in old.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_predict_overwrite_checks_every_case_folder_before_replacing_any(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "p1", img, aff)
    _write_case(tmp_path / "in", "p2", img[:, ::-1].copy(), aff)
    out = tmp_path / "out"
    predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False)
    before = {p: p.stat().st_ino for p in out.rglob("*")}
    _not_writable(monkeypatch, out / "p2")
    with pytest.raises(PermissionError, match=f"cannot replace {out / 'p2'}: {out / 'p2'} is not writable"):
        predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, overwrite=True)
    assert {p: p.stat().st_ino for p in out.rglob("*")} == before  # p1 was not replaced either


def test_interrupted_case_is_predicted_again(tmp_path: Path, umask_022: None) -> None:
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "p1", img, aff)
    _write_case(tmp_path / "in", "p2", img[:, ::-1].copy(), aff)
    out = tmp_path / "out"
    first = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False)
    assert _mode(out / "p1") == 0o755 and _mode(out / "p1" / "baseline_mask.nii.gz") == 0o644
    reference = {p.name: _voxels(p) for p in (out / "p2").glob("*.nii.gz")}
    # a run killed while writing p2 (older versions wrote file by file) and a killed temporary folder
    for f in list((out / "p2").iterdir())[1:]:
        f.unlink()
    (out / f".p2.{_dead_pid()}.q1w2e3.tmp").mkdir()
    assert not prediction_complete(out, "p2", 2)
    assert prediction_complete(out, "p1", 2) and prediction_complete(out, "p1", 2, kinds=["mask"])
    # a file damaged since it was written is no complete output either (it was kept by --skip-existing)
    damaged = out / "p1" / "progression_t1_entropy.nii.gz"
    kept = damaged.read_bytes()
    damaged.write_bytes(b"junk\n")
    assert not prediction_complete(out, "p1", 2) and prediction_complete(out, "p1", 2, kinds=["mask"])
    damaged.write_bytes(kept)
    redone = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False,
                            skip_existing=True)
    assert sorted(redone) == ["p2"] and sorted(first) == ["p1", "p2"]
    again = {p.name: _voxels(p) for p in (out / "p2").glob("*.nii.gz")}
    assert again.keys() == reference.keys()
    for name, voxels in reference.items():
        np.testing.assert_array_equal(again[name], voxels)  # same computation, same input: exact
    assert sorted(p.name for p in out.iterdir()) == ["p1", "p2"]


def test_the_prediction_record_is_written_with_the_case_folder(tmp_path: Path) -> None:
    """The record is part of the case folder's one atomic write: a record that cannot be written leaves no case
    folder (nor a new one over the old), and a written one holds exactly the record."""
    masks = [np.zeros((2, 2, 2), np.uint8)] * 2
    with pytest.raises(TypeError, match="not JSON serialisable"):
        save_prediction(tmp_path, "c", np.eye(4), {"mask": masks}, record={"model": object()})
    assert list(tmp_path.iterdir()) == []
    save_prediction(tmp_path, "c", np.eye(4), {"mask": masks}, record={"model": "A"})
    before = {f.name: f.read_bytes() for f in (tmp_path / "c").iterdir()}
    with pytest.raises(TypeError):
        save_prediction(tmp_path, "c", np.eye(4), {"mask": [m + 1 for m in masks]}, overwrite=True,
                        record={"model": object()})
    assert {f.name: f.read_bytes() for f in (tmp_path / "c").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary left behind
    assert json.loads(before[PREDICTION_RECORD]) == {"model": "A"}


def test_readers_of_prediction_folders_ignore_the_record(tmp_path: Path) -> None:
    """evaluate, lesions, find_mask_cases, read_prediction, prediction_complete and predict's own check for files it
    did not write all take the record's case folder as a plain prediction."""
    from longiseg.metrics.evaluate import evaluate_folder
    from longiseg.metrics.evolution import evolution_folder

    img, aff = _images(t=3, c=2), _affine()
    _write_case(tmp_path / "in", "p1", img, aff)
    out = tmp_path / "out"
    predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False)
    assert (out / "p1" / PREDICTION_RECORD).is_file()
    assert [(e.case_id, e.num_timepoints) for e in find_mask_cases(out)] == [("p1", 3)]
    for kind in ("mask", "prob", "entropy"):
        assert read_prediction(out, "p1", 3, kind)[0].shape == (3, *img.shape[2:])
    assert prediction_complete(out, "p1", 3)
    assert len(evaluate_folder(out, out, progress=False).table.rows) > 0  # the prediction against itself
    assert [e.case_id for e in evolution_folder(out, progress=False)] == ["p1"]
    assert list(predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False,
                               overwrite=True)) == ["p1"]


def test_text_outputs_are_utf8_on_any_locale(tmp_path: Path) -> None:
    """A report declares UTF-8 and holds "mm³": on a machine whose locale encoding is ASCII (LC_ALL=C without
    UTF-8 mode) the text writers still write UTF-8 instead of failing (or writing the locale's bytes)."""
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from longiseg.utils.io import atomic_write, atomic_write_json; "
            "atomic_write(sys.argv[1], lambda fh: fh.write('volume 3 mm\\u00b3')); "
            "atomic_write_json(sys.argv[2], {'case': 'Gen\\u00e8ve'})")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PYTHONUTF8": "0",
           "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.html"), str(tmp_path / "s.json")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.html").read_bytes() == "volume 3 mm\u00b3".encode()
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == {"case": "Gen\u00e8ve"}


def test_live_temporaries_of_other_names_and_machines_are_kept(tmp_path: Path, umask_022: None) -> None:
    """The writer of case ``p1`` must not take the live temporary of case ``p1.12`` (whose name continues with
    ``.12.``) for a dead writer's, nor remove a temporary that a process of another machine sharing the folder
    is writing (its pid means nothing here) until it is a day old."""
    from longiseg.utils import io as io_module

    dead = _dead_pid()
    other_host = "0" * 8 if io_module._HOST != "0" * 8 else "1" * 8
    dotted = tmp_path / f".p1.12.{os.getpid()}-{io_module._HOST}.x5sqtv2c.tmp"  # live writer of case p1.12
    dotted_old = tmp_path / f".p1.{dead}.12.x5sqtv2c.tmp"  # another shape that must not pass for one of p1
    remote = tmp_path / f".p1.{dead}-{other_host}.r5feoilg.tmp"  # a live writer on another node
    for folder in (dotted, dotted_old, remote):
        folder.mkdir()
    assert remove_stale_temporaries(tmp_path / "p1") == []
    day_old = time.time() - io_module.OTHER_HOST_STALE_S - 60
    os.utime(remote, (day_old, day_old))
    assert remove_stale_temporaries(tmp_path / "p1") == [remote]
    assert dotted.is_dir() and dotted_old.is_dir()
    mine = tmp_path / f".p1.{dead}-{io_module._HOST}.a1b2c3d4.tmp"  # a killed writer of this machine
    mine.mkdir()
    assert remove_stale_temporaries(tmp_path / "p1") == [mine]


def test_a_folder_removed_or_written_by_another_process_is_not_published(tmp_path: Path) -> None:
    """A staging folder another process removed (and a writer re-created) would publish part of a case; a
    destination another process wrote meanwhile is a FileExistsError, not a bare 'Directory not empty'."""
    with pytest.raises(FileNotFoundError, match="removed by another process"), \
            atomic_directory(tmp_path / "case") as tmp:
        (tmp / "a.txt").write_text("half")
        shutil.rmtree(tmp)
        tmp.mkdir()  # as atomic_path's parent.mkdir would re-create it
        (tmp / "b.txt").write_text("the rest")
    assert not (tmp_path / "case").exists()
    with pytest.raises(FileExistsError, match="another process"), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "mine.txt").write_text("mine")
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "theirs.txt").write_text("theirs")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs.txt"]


@pytest.mark.parametrize("shear", [0.0, 0.3])
def test_nifti_outputs_carry_both_forms_where_possible_and_mm_units(tmp_path: Path, shear: float) -> None:
    import nibabel as nib

    from longiseg.data.volumes import nifti_spacing

    affine = np.array([[0.0, -1.0, shear, 90.0], [0.9, 0.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0, 0, 0, 1]])
    path = atomic_save_nifti(np.zeros((4, 5, 6), np.uint8), affine, tmp_path / "m.nii.gz")
    img = nib.load(path)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert int(img.header["sform_code"]) > 0
    # an affine a qform can hold is in both forms; a sheared one only in the sform (no disagreeing qform)
    assert (int(img.header["qform_code"]) > 0) == (shear == 0.0)
    np.testing.assert_allclose(img.affine, affine, rtol=0, atol=1e-4)
    if shear == 0.0:  # our own reader accepts what we write (units, forms, pixdim); it refuses sheared grids
        nifti_spacing(img, path)


def test_long_names_with_dots_and_older_temporaries_of_long_names(tmp_path: Path) -> None:
    """A long name with a dot early on (metrics_lr0.001_...json) kept a suffix as long as the name, and a
    temporary that a killed writer of an earlier version left under the whole long name was never removed."""
    name = "metrics_lr0.001_" + "x" * 190 + ".json"
    atomic_write_json(tmp_path / name, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == [name]
    long = "c" * 180
    older = tmp_path / f".{long}.{_dead_pid()}.abc123.tmp"  # the whole name: longiseg before 0.3.26
    older.mkdir()
    assert remove_stale_temporaries(tmp_path / long) == [older]
