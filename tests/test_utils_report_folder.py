"""``longiseg.utils.report_folder``: a report folder written as a whole (used by ``longiseg evaluate`` and
``longiseg lesions``)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_report_folder_rules(tmp_path: Path) -> None:
    from longiseg.utils.report_folder import report_folder

    pats = ("a.csv", "b.json", "figures/*_x.png")
    out = tmp_path / "r"
    with report_folder(out, pats) as stage:
        (stage / "a.csv").write_text("1")
        (stage / "figures").mkdir()
        (stage / "figures" / "c1_x.png").write_text("png")
    assert _listing(out) == ["a.csv", "figures", "figures/c1_x.png"]
    with report_folder(out, pats) as stage:  # only report files: replaced as a whole
        (stage / "b.json").write_text("{}")
    assert _listing(out) == ["b.json"]
    (out / "figures").mkdir()
    (out / "figures" / "c1_x.png").write_text("old")
    (out / "figures" / "keep.png").write_text("mine")
    (out / "a.csv.lnk").symlink_to(out / "b.json")
    with report_folder(out, pats) as stage:  # other content: only report files replaced or removed
        (stage / "a.csv").write_text("2")
    assert _listing(out) == ["a.csv", "a.csv.lnk", "figures", "figures/keep.png"]
    with pytest.raises(ValueError, match=r"not among the report's files"), report_folder(out, pats) as stage:
        (stage / "other.txt").write_text("x")
    assert _listing(out) == ["a.csv", "a.csv.lnk", "figures", "figures/keep.png"]
    assert (out / "a.csv").read_text(encoding="utf-8") == "2"
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError), report_folder(tmp_path / "f", pats):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "r"]  # no staging folder left


def test_report_folder_stages_inside_when_the_parent_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import longiseg.utils.report_folder as rep

    pats = ("a.csv", "b.json")
    out = tmp_path / "r"
    out.mkdir()
    (out / "a.csv").write_text("old")
    monkeypatch.setattr(rep, "_writable", lambda folder: False)  # e.g. a shared, read-only parent folder
    with rep.report_folder(out, pats) as stage:
        assert stage.parent == out
        (stage / "b.json").write_text("{}")
    assert _listing(out) == ["b.json"] and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_linked_report_folder_is_staged_in_the_folder_it_names(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--out a link to a folder on another file system (/dev/shm): the report was staged beside the link and every
    rename into the target failed after the whole evaluation ("Invalid cross-device link"), leaving figures/."""
    import errno
    import os

    import longiseg.utils.report_folder as rep

    target = tmp_path / "elsewhere" / "rep"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("kept")
    link = tmp_path / "out"
    link.symlink_to(target)
    replace = os.replace

    def same_device_only(src: object, dst: object) -> None:  # a rename from beside the link crosses devices
        if not Path(src).resolve().is_relative_to(target.resolve()):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        replace(src, dst)

    monkeypatch.setattr(rep.os, "replace", same_device_only)
    with rep.report_folder(link, ("a.csv", "figures/*.png")) as stage:
        assert stage.resolve().parent == target.resolve()
        (stage / "a.csv").write_text("new")
        (stage / "figures").mkdir()
        (stage / "figures" / "f.png").write_bytes(b"png")
    assert link.is_symlink() and _listing(target) == ["a.csv", "figures", "figures/f.png", "mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]  # nothing beside the link


@pytest.mark.parametrize("start", ["missing", "empty", "other content"])
def test_report_folder_without_overwrite_leaves_a_report_written_meanwhile(tmp_path: Path, start: str) -> None:
    """Two reports into the same folder, neither allowed to replace a report (two runs started together without
    --overwrite): the one that finishes second fails, naming the folder and --overwrite, and the other's report
    stays as it was (before, it was silently replaced)."""
    from longiseg.utils.report_folder import report_folder

    pats = ("a.csv", "b.json")
    out = tmp_path / "r"
    if start != "missing":
        out.mkdir()
    if start == "other content":
        (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=rf"{out} was written by another process while this report was being "
                                              r"written.*pass overwrite=True \(--overwrite\)"):
        with report_folder(out, pats, overwrite=False) as stage:
            (stage / "a.csv").write_text("second")
            with report_folder(out, pats, overwrite=False) as other:  # the other run finishes first
                (other / "b.json").write_text("first")
    theirs = ["b.json"] + (["notes.txt"] if start == "other content" else [])
    assert _listing(out) == theirs and (out / "b.json").read_text(encoding="utf-8") == "first"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    with pytest.raises(FileExistsError, match=r"already holds a report \(b\.json\).*\(--overwrite\)"):
        with report_folder(out, pats, overwrite=False) as stage:
            raise AssertionError("refused before anything is written")
    with report_folder(out, pats) as stage:  # overwrite (the default): replaced
        (stage / "a.csv").write_text("third")
    assert [f for f in _listing(out) if f != "notes.txt"] == ["a.csv"]


def test_the_old_import_paths_still_work_with_a_deprecation_warning() -> None:
    import importlib
    import sys

    from longiseg.data import crops
    from longiseg.utils.report_folder import report_folder

    with pytest.warns(DeprecationWarning, match=r"report_folder moved to longiseg\.utils\.report_folder"):
        from longiseg.metrics.report import report_folder as old
    assert old is report_folder
    sys.modules.pop("longiseg.data.sampling", None)
    with pytest.warns(DeprecationWarning, match=r"longiseg\.data\.sampling moved to longiseg\.data\.crops"):
        sampling = importlib.import_module("longiseg.data.sampling")
    assert sampling.crop_window is crops.crop_window and set(sampling.__all__) == set(crops.__all__)
