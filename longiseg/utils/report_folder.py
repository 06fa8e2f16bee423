"""A report folder written as a whole: every file of a report is staged, then the folder holds this report's files
and no file of an earlier one, while files of other content in it are left alone (:func:`report_folder`)."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from longiseg.utils.io import (
    PathLike,
    WrittenMeanwhile,
    atomic_directory,
    remove_stale_temporaries,
    temporary_prefix,
)

__all__ = ["report_folder"]

_STAGE = ".longiseg-report"  # name of a staging folder made inside the report folder (see report_folder)


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """Whether the ``/``-separated relative path ``rel`` matches a pattern, component by component."""
    parts = rel.split("/")
    for pat in patterns:
        pat_parts = pat.split("/")
        if len(pat_parts) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pat_parts)):
            return True
    return False


def _entries(root: Path) -> tuple[list[str], list[str], list[str]]:
    """``(files, folders, others)`` under ``root`` as ``/``-separated relative paths; symbolic links (never
    followed) and special files are ``others``."""
    files: list[str] = []
    folders: list[str] = []
    others: list[str] = []
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_symlink():
                    others.append(rel)
                elif e.is_dir():
                    folders.append(rel)
                    stack.append((rel + "/", Path(e.path)))
                elif e.is_file():
                    files.append(rel)
                else:
                    others.append(rel)
    return sorted(files), sorted(folders), sorted(others)


def _only_report(out: Path, patterns: Sequence[str]) -> bool:
    """Whether ``out`` holds nothing but files matching ``patterns`` and the folders those name."""
    files, folders, others = _entries(out)
    report_dirs = {"/".join(p.split("/")[:i]) for p in patterns for i in range(1, p.count("/") + 1)}
    return not others and set(folders) <= report_dirs and all(_matches(f, patterns) for f in files)


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


@contextlib.contextmanager
def report_folder(out: PathLike, patterns: Sequence[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Write a report folder as a whole: yield an empty staging folder to write every file of the report
    into; on success ``out`` holds this report's files and no file of an earlier report.

    ``patterns`` are the relative paths (``fnmatch`` patterns per ``/``-separated component, e.g.
    ``"summary.json"``, ``"figures/*_volume.png"``) of every file a report of this kind may hold: they decide
    what is "ours" in ``out``.

    * ``out`` missing, or holding nothing but files matching ``patterns`` (an earlier report): it is replaced
      as a whole (:func:`~longiseg.utils.io.atomic_directory`), so readers see the old report or the new one,
      never a mix.
    * ``out`` also holding anything else (the user pointed the report at a folder with other content), or
      being a symbolic link or the working directory (or above it): nothing but report files is touched. The new files are moved in (each
      by one rename), then the files matching ``patterns`` that this report did not write are removed, and
      report sub-folders left empty.

    Deciding whether an existing report may be replaced is the caller's: ``overwrite`` (default) replaces it.
    With ``overwrite=False`` a report file in ``out`` raises ``FileExistsError`` before anything is written,
    and so does a report that another process writes into ``out`` while this one is being written (two runs
    started into the same new folder): the other's report stays, it is not silently replaced. On an
    exception ``out`` is left as it was and the staging folder is removed.

    Raises:
        NotADirectoryError: ``out`` exists and is not a folder.
        FileExistsError: ``overwrite`` is ``False`` and ``out`` holds a report file, or another process wrote
            into ``out`` meanwhile.
        PermissionError: (before the block runs) ``out`` cannot be replaced as a whole
            (:func:`~longiseg.utils.io.check_replaceable`), or, written file by file, a folder of ``out`` that
            holds report files is not writable.
        ValueError: the report wrote a file no pattern names (nothing is moved into ``out``).
    """
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if not overwrite:
        _refuse_report(out, patterns, f"{out} already holds a report")
    fresh = not out.exists()  # a new folder: created without replacing anything
    meanwhile = f"{out} was written by another process while this report was being written"
    inside = out.is_dir() and not _writable(out.parent)  # may write into out but not beside it: stage inside
    cwd = Path(os.path.abspath(Path.cwd()))
    if not inside and not out.is_symlink() and not cwd.is_relative_to(out) and (
            fresh or _only_report(out, patterns)):
        try:
            with atomic_directory(out, overwrite=overwrite or not fresh) as stage:  # replaced as a whole
                yield stage
                _check_report_files(stage, patterns)
                if not overwrite:  # no report may have appeared meanwhile (atomic_directory checks again)
                    _refuse_report(out, patterns, meanwhile)
        except WrittenMeanwhile as err:  # a new folder that another process created meanwhile
            if overwrite:
                raise
            raise FileExistsError(f"{meanwhile}; not replacing it: pass overwrite=True (--overwrite) to replace "
                                  "it") from err
        return
    _check_report_folders_writable(out, patterns)  # before the report is written, not when it is moved in
    # staged inside out when only out is writable, or when out is a link (beside the link may be another file
    # system than the folder it names: the files could not be renamed into it); else beside it
    staged = out / _STAGE if inside or out.is_symlink() else out
    remove_stale_temporaries(staged)
    stage = Path(tempfile.mkdtemp(prefix=temporary_prefix(staged), suffix=".tmp", dir=staged.parent))
    try:
        yield stage
        new = _check_report_files(stage, patterns)
        if not overwrite:
            _refuse_report(out, patterns, meanwhile)
        _merge_report(stage, out, new, patterns)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_report_folders_writable(out: Path, patterns: Sequence[str]) -> None:
    """Raise ``PermissionError`` when a report written into the existing folder ``out`` file by file could not be
    completed: ``out`` or a folder of it where report files are (a ``figures/`` of an earlier report made
    read-only) is not writable. Folders of other content are not the report's to check."""
    if not out.is_dir():
        return
    files, folders, _ = _entries(out)
    parents = [p.rsplit("/", 1)[0] for p in patterns if "/" in p]  # e.g. "figures" of "figures/*.png"
    ours = {out, *((out / f).parent for f in files if _matches(f, patterns)),
            *(out / d for d in folders if _matches(d, parents))}
    for folder in sorted(ours, key=lambda p: len(p.parts)):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write the report into {out}: {folder} is not writable (report files go "
                                  "there); nothing was changed")


def _refuse_report(out: Path, patterns: Sequence[str], what: str) -> None:
    """Raise ``FileExistsError`` (``what``, the files, ``--overwrite``) when the folder ``out`` holds report
    files."""
    if not out.is_dir():
        return
    found = [f for f in _entries(out)[0] if _matches(f, patterns)]
    if found:
        raise FileExistsError(f"{what} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); not replacing "
                              "it: pass overwrite=True (--overwrite) to replace it")


def _check_report_files(stage: Path, patterns: Sequence[str]) -> list[str]:
    """The files written into ``stage`` (relative paths), each named by one of ``patterns``."""
    new, _, odd = _entries(stage)
    unknown = odd + [f for f in new if not _matches(f, patterns)]
    if unknown:
        raise ValueError(f"report files {unknown} are not among the report's files {list(patterns)}")
    return new


def _merge_report(stage: Path, out: Path, new: Sequence[str], patterns: Sequence[str]) -> None:
    """Move the staged files ``new`` into ``out``, then remove the report files there that ``new`` lacks."""
    for rel in new:
        dest = out / rel
        if dest.is_dir() and not dest.is_symlink():
            raise IsADirectoryError(f"{dest} is a folder; the report would write a file there")
    for rel in new:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest)  # leftovers of a killed writer of an earlier version
        os.replace(stage / rel, dest)
    kept = set(new)
    emptied: set[Path] = set()
    old, _, _ = _entries(out)
    for rel in old:
        if rel not in kept and _matches(rel, patterns):
            (out / rel).unlink()
            emptied.update(p for p in (out / rel).parents if p != out and out in p.parents)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # left in place when it holds anything else
            folder.rmdir()
