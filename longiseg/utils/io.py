"""Atomic file writing: write to a temporary file in the destination folder, then rename.

A crash or interruption never leaves a half-written output or checkpoint behind, and an existing file
is only replaced when ``overwrite=True``. Finished files and folders get the permissions the process umask
gives (``0644``/``0755`` under the usual ``022``), not the private ``0600``/``0700`` of temporary files, so
colleagues on a shared server can read results. Temporary names carry the writer's process id; leftovers
of a killed writer (whose process no longer exists) are removed the next time the same destination is
written.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from longiseg.utils.validation import check_bool, check_instance, check_path, check_positive_int

__all__ = ["expand_home", "folder_is_empty", "host_tag", "process_start_time", "writer_ended", "end_with_parent",
           "WrittenMeanwhile",
           "temporary_prefix", "removed_if_created", "atomic_path", "atomic_directory", "atomic_directories",
           "atomic_write",
           "atomic_torch_save", "atomic_save_figure", "atomic_write_json", "csv_text", "apply_umask",
           "remove_stale_temporaries",
           "check_separate_folders", "check_input_folder", "check_output_folder", "check_replaceable"]

PathLike = str | os.PathLike

_UMASK_LOCK = threading.Lock()


def _check_target(path: Path, overwrite: bool) -> None:
    # a string such as "false" would count as True and replace the file
    if not check_bool("overwrite", overwrite) and path.exists():
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")


def check_input_folder(path: PathLike, name: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if it is an existing folder (to read from).

    Args:
        path: the folder.
        name: what it is, for the message (``"cohort folder"``, ``"data.root"``).

    Raises:
        NotADirectoryError: ``path`` is a file.
        FileNotFoundError: ``path`` does not exist.
    """
    path = check_path(name, path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name} {path} is a file, not a folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{name} {path} does not exist")
    return path


def check_output_folder(path: PathLike, name: str) -> Path:
    """Fail before any work when ``path`` cannot become a writable folder: a file, a path under a file or a
    dangling symbolic link, a folder whose nearest existing ancestor is not writable.

    Args:
        path: the output folder (it need not exist).
        name: how the user gave it (``"--output"``), for the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        NotADirectoryError: ``path`` or one of its ancestors is a file or a dangling symbolic link.
        PermissionError: the nearest existing ancestor is not writable.
    """
    path = check_path(name, path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name} {path} exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # mkdir fails on it with a bare "[Errno 17] File exists", after the work
            raise NotADirectoryError(f"{name} {path}: {probe} is a symbolic link to {os.readlink(probe)}, which does "
                                     "not exist; create the folder it points to, or give another path")
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{name} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {path}: {probe} is not writable")
    return path


def check_replaceable(path: PathLike) -> None:
    """Fail before any work when the existing folder ``path`` cannot be replaced (or emptied) as a whole.

    Replacing a folder moves it aside and deletes it: on Linux moving a folder into another one rewrites its
    ``..`` entry (``path`` itself must be writable), and deleting it needs every folder in it readable and
    writable. A read-only case or figure sub-folder of an earlier output (``chmod -R a-w`` to protect results)
    would otherwise fail the move after hours of work with a bare ``[Errno 13]``, or leave the old files in a
    temporary beside ``path``. Symbolic links in ``path`` are not followed (they are removed, not their targets).
    Root passes every check, as it passes the deletion.

    Args:
        path: the folder to be replaced; a missing path or a symbolic link (replaced as a link) passes.

    Raises:
        PermissionError: naming ``path`` and the first folder in it that is not writable or cannot be read
            (nothing was deleted).
    """
    path = check_path("path", path)
    if path.is_symlink() or not path.is_dir():
        return

    def unreadable(err: OSError) -> None:
        raise PermissionError(f"cannot replace {path}: {err.filename} cannot be read ({err.strerror}); nothing "
                              "was deleted")

    for folder, _, _ in os.walk(path, onerror=unreadable):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot replace {path}: {folder} is not writable; nothing was deleted")


def check_separate_folders(output: PathLike, output_name: str, inputs: dict[str, PathLike | None]) -> None:
    """Refuse an output folder that is an input folder, lies inside one or holds one.

    Outputs replaced with ``overwrite`` would otherwise delete the inputs (a case folder of predictions replaces
    the case folder of scans of the same name), and outputs inside an input folder would be read back as input
    the next time. Paths are compared after resolving ``..`` and symbolic links; they need not exist yet.

    Args:
        output: the output folder.
        output_name: how the user gave it (``"--output"``), for the message.
        inputs: input folders by how the user gave them (``{"--input": path}``); ``None`` values are skipped.

    Raises:
        ValueError: naming both folders and how they overlap.
    """
    out = check_path(output_name, output).resolve()
    for name, path in check_instance("inputs", inputs, Mapping, "a dict of input folders by name").items():
        if path is None:
            continue
        inp = check_path(name, path).resolve()
        if out == inp:
            how = "is"
        elif inp in out.parents:
            how = "lies inside"
        elif out in inp.parents:
            how = "holds"
        else:
            continue
        raise ValueError(f"{output_name} {output} {how} the {name} folder {path}: outputs would replace or mix "
                         "with the inputs; choose a separate folder")


def expand_home(path: PathLike | None) -> Any:
    """``path`` with a leading ``~`` or ``~user`` expanded (as a shell does), else unchanged (``None`` too).

    Paths from configuration files and ``--opt=~/x`` reach the library unexpanded: without this they would name
    a folder called ``~`` in the working directory (which a later ``rm -rf ~`` would confuse with the home).
    """
    if isinstance(path, str) and path.startswith("~"):
        return os.path.expanduser(path)
    if isinstance(path, Path) and str(path).startswith("~"):
        return path.expanduser()
    return path


def _current_umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: PathLike) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have: ``0666`` (files) or ``0777`` (folders)
    minus the process umask. Temporary files from :mod:`tempfile` are ``0600``/``0700`` instead. A folder keeps
    its setgid bit (set by ``mkdir`` in a shared setgid project folder: files added later get the group)."""
    path = check_path("path", path)
    if path.is_dir():
        os.chmod(path, (0o777 & ~_current_umask()) | (path.stat().st_mode & stat.S_ISGID))
    else:
        os.chmod(path, 0o666 & ~_current_umask())


def _take_permissions(target: Path, like: os.stat_result) -> None:
    """Give ``target`` the permission bits (setgid included) and the group of the file or folder it replaces
    (``like``): the group where the process may set it (its own, or one it belongs to), silently not elsewhere."""
    with contextlib.suppress(OSError):
        os.chown(target, -1, like.st_gid)
    os.chmod(target, stat.S_IMODE(like.st_mode))  # after chown, which may clear the setgid bit


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` of this machine started (clock ticks since boot, Linux ``/proc``); ``None`` where it
    cannot be read (no such process, or no ``/proc``). A pid and its start time name one process: a pid the
    system gave again to another process has another start time."""
    pid = check_positive_int("pid", pid, minimum=0)
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read()
        return int(fields[fields.rindex(")") + 2:].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


#: This machine, as temporaries name it: processes of other machines writing to a shared file system (cluster
#: nodes, containers) cannot be asked whether they still run.
_HOST = hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:8]
#: A temporary of another machine (or of a pid namespace we cannot see) is stale after this long unchanged.
OTHER_HOST_STALE_S = 24 * 3600.0
#: The writer field of a temporary's name: ``PID-HOST`` (``PID`` alone in names of earlier versions).
_WRITER = r"(\d+)(?:-([0-9a-f]{8}))?"
_RANDOM_TMP = r"\.[a-z0-9_]+\.tmp"  # tempfile's random letters (never a dot), then ".tmp..."


class WrittenMeanwhile(FileExistsError):
    """The destination of an atomic write was written by another process while this one wrote its temporary."""


#: Names longer than this (in UTF-8 bytes) are shortened in their temporaries' names (see :func:`_temporary_stem`):
#: file systems allow 255-byte names, and a temporary adds up to about 40 bytes and its suffix (``.nii.gz``).
_LONGEST_STEM = 160
_SHORT_STEM = 140  # bytes of a long name a shortened stem keeps, before ``~`` and 12 hex digits of the name's hash


def _temporary_stem(name: str) -> str:
    """``name`` as its temporaries spell it: unchanged, or, longer than :data:`_LONGEST_STEM` bytes, its first
    :data:`_SHORT_STEM` bytes, ``~`` and a hash of the whole name (an output folder named with 240 characters
    still gets a temporary whose name the file system accepts, and one distinct from its neighbours')."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _LONGEST_STEM:
        return name
    digest = hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:12]
    return raw[:_SHORT_STEM].decode("utf-8", "ignore") + "~" + digest  # "ignore": never half a character


#: Longest suffix (bytes) a temporary keeps of its destination's name.
_LONGEST_SUFFIX = 16


def _temporary_suffix(path: Path) -> str:
    """The suffix that keeps a temporary of ``path`` readable by format-picking writers: its last two suffixes
    (``.nii.gz``, ``.json``), fewer where they are long (``metrics_lr0.001_...json`` keeps ``.json``): a name
    with dots does not make its temporary's name too long."""
    suffixes = path.suffixes[-2:]
    while suffixes and len("".join(suffixes).encode("utf-8", "surrogateescape")) > _LONGEST_SUFFIX:
        suffixes = suffixes[1:]
    return "".join(suffixes)


def temporary_prefix(path: PathLike) -> str:
    """Prefix of a temporary of ``path``: ``.NAME.PID-HOST.`` (:mod:`tempfile` adds ``RANDOM`` and ``.tmp...``),
    with a long ``NAME`` shortened (:func:`_temporary_stem`); :func:`remove_stale_temporaries` recognises such
    temporaries when their writer has ended."""
    path = check_path("path", path)
    return f".{_temporary_stem(path.name)}.{os.getpid()}-{_HOST}."


#: Any temporary's name: ``.NAME.PID-HOST.RANDOM.tmp...``.
_TEMPORARY = re.compile(r"^\..+\." + _WRITER + _RANDOM_TMP)


def host_tag() -> str:
    """This machine as temporaries and claims name it (8 hex digits of its host name)."""
    return _HOST


def end_with_parent(parent: int) -> None:
    """In a child process: end (SIGTERM) when process ``parent`` ends, also when it is killed (Linux
    ``PR_SET_PDEATHSIG``; elsewhere the parent's clean-up must stop it), and end now if it has already ended.

    Worker processes (the demo's trainings, DataLoader workers) call it first, so that none is left running, with
    its memory and shared-memory segments, after its parent was interrupted or killed.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)


def writer_ended(mark: PathLike, pid: int, host: str | None, started: int | None = None) -> bool:
    """Whether the process that left ``mark`` (a temporary, a claim) has ended: on this machine (``host`` is
    :func:`host_tag` or ``None``, as in names of earlier versions) when process ``pid`` no longer exists, or
    exists with another start time than ``started`` (:func:`process_start_time` of the writer, where the mark
    records it: the pid was given again to another process); on another machine sharing the folder, whose
    processes cannot be asked, when ``mark`` is older than :data:`OTHER_HOST_STALE_S`. A mark that is gone
    meanwhile has not ended (its writer just finished)."""
    pid = check_positive_int("pid", pid, minimum=0)
    mark = check_path("mark", mark)
    check_instance("host", host, (str, type(None)), "a str (host_tag()) or None")
    check_instance("started", started, (int, np.integer, type(None)), "an int (process_start_time()) or None")
    if (host is None or host == _HOST) and os.name != "nt":
        if not _pid_alive(pid):
            return True
        now = process_start_time(pid) if started is not None else None
        return now is not None and now != started
    try:
        return time.time() - mark.lstat().st_mtime > OTHER_HOST_STALE_S
    except OSError:
        return False


def _writer_gone(entry: Path, found: re.Match) -> bool:
    """Whether the writer of the temporary ``entry`` (its name matched as ``found``) has ended."""
    return writer_ended(entry, int(found.group(1)), found.group(2))


def _stale(entry: Path) -> bool:
    """Whether ``entry`` is a temporary of this module whose writer has ended."""
    found = _TEMPORARY.match(entry.name)
    return found is not None and _writer_gone(entry, found)


def folder_is_empty(path: PathLike, ignore: Collection[str] = ()) -> bool:
    """Whether the folder ``path`` holds nothing but temporaries that killed writers left (which the next writer
    removes) and the entries named in ``ignore``: a run killed while writing into a new output folder does not make
    the folder look used.

    Args:
        path: an existing folder.
        ignore: names of entries that do not count (e.g. the caller's own claim file in it).

    Raises:
        NotADirectoryError: ``path`` is not a folder.
        TypeError: ``ignore`` is a str instead of a collection of names.
    """
    path = check_path("path", path)
    if isinstance(ignore, str):
        raise TypeError(f"ignore must be a collection of names, got the str {ignore!r}")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    ignored = set(ignore)
    return all(entry.name in ignored or _stale(entry) for entry in path.iterdir())


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Remove the temporaries that a killed writer of ``path`` left beside it.

    A temporary of ``path`` is named ``.NAME.PID-HOST.RANDOM.tmp...`` for exactly ``path``'s name (shortened when
    long, see :func:`temporary_prefix`; a temporary of case ``p1.12`` is never taken for one of ``p1``); it is
    stale when process ``PID`` of this machine no longer
    exists, or, written by another machine sharing the folder, when it is older than :data:`OTHER_HOST_STALE_S`.
    Temporaries of live writers (this process included) are kept.

    Returns:
        The removed paths.
    """
    path = check_path("path", path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    # the stem as this version names temporaries, or the whole name as versions before 0.3.26 did
    stems = {re.escape(_temporary_stem(path.name)), re.escape(path.name)}
    own = re.compile(r"^\.(?:" + "|".join(sorted(stems)) + r")\." + _WRITER + _RANDOM_TMP)
    for cand in path.parent.iterdir():
        found = own.match(cand.name)
        if found is None or not _writer_gone(cand, found):
            continue
        with contextlib.suppress(OSError):
            if cand.is_dir() and not cand.is_symlink():
                shutil.rmtree(cand)
            else:
                cand.unlink()
            removed.append(cand)
    return removed


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool = True, suffix: str | None = None,
                keep_permissions: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Args:
        path: final destination.
        overwrite: replace an existing file; if ``False`` an existing file raises ``FileExistsError``.
        suffix: suffix of the temporary file (keeps e.g. ``.nii.gz`` so writers pick the format);
            defaults to the destination's last two suffixes (``.nii.gz``).
        keep_permissions: a file that replaces an existing one gets that file's mode and group (set before the
            rename: a private file is never readable by others meanwhile) instead of the umask's mode (an edit
            in place, such as ``longiseg tune`` rewriting a checkpoint).

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = check_path("path", path)
    check_instance("suffix", suffix, (str, type(None)), "a str or None")
    check_bool("keep_permissions", keep_permissions)
    _check_target(path, overwrite)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if suffix is None:
        suffix = _temporary_suffix(path)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not overwrite and path.exists():
            raise WrittenMeanwhile(f"{path} appeared while writing; not overwritten")
        apply_umask(tmp_path)
        if keep_permissions and path.exists():
            _take_permissions(tmp_path, path.stat())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: PathLike, *, overwrite: bool = False, follow_link: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path`` as a whole.

    Readers see either the complete folder or none (or, with ``overwrite``, the complete old one): an
    interrupted writer leaves only a temporary that the next writer of ``path`` removes. A folder that replaces
    an existing one keeps that folder's mode and group, and its setgid bit (files written into it get its
    group): a report folder made beforehand for a team (``chmod 2770``, ``chgrp``) stays theirs.

    Args:
        path: final folder.
        overwrite: replace an existing ``path``; if ``False`` an existing one raises ``FileExistsError``.
        follow_link: a ``path`` that is a symbolic link to a folder stays a link and the folder it names is
            replaced (for the output folder a user names: replacing the link left the old folder, stale, where
            everyone else reading it looks). Off (default), a link is replaced as a link: a case folder linked
            into another cohort is not written through.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is off.
        PermissionError: ``path`` exists and cannot be replaced (:func:`check_replaceable`), before the block runs.
        NotADirectoryError: with ``follow_link``, ``path`` is a symbolic link to something other than a folder.

    On an exception (Ctrl-C and SIGTERM included, also between moving the old folder aside and renaming the new
    one in) the temporary folder is removed, ``path`` is untouched, and the parent folders this call created for
    it are removed again (while empty).
    """
    with atomic_directories([check_path("path", path)], overwrite=overwrite, follow_links=follow_link) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_directories(paths: Sequence[PathLike], *, overwrite: bool = False, follow_links: bool = False
                       ) -> Iterator[list[Path]]:
    """:func:`atomic_directory` for folders that belong together (a cohort and its train/test split): yields one
    empty temporary folder per path; on success they replace their paths one after another, and an exception
    while they do (Ctrl-C, SIGTERM, a failed rename) puts back every folder already replaced, so that the set is
    either all new or all old. Only a hard kill (SIGKILL, power loss) in the few renames can leave a mix.

    Args:
        paths: the final folders, distinct.
        overwrite: replace existing folders; if ``False`` an existing one raises ``FileExistsError``.
        follow_links: as ``follow_link`` of :func:`atomic_directory`, for every path.

    Raises:
        TypeError: ``paths`` is not a sequence of paths.
        ValueError: ``paths`` is empty or names a folder twice.
        FileExistsError, PermissionError, NotADirectoryError: as :func:`atomic_directory`, for any path, before
            the block runs.
    """
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence):
        raise TypeError(f"paths must be a sequence of folders, got {type(paths).__name__}")
    folders = [check_path(f"paths[{i}]", p) for i, p in enumerate(paths)]
    if check_bool("follow_links", follow_links):
        folders = [_through_link(f) for f in folders]
    if not folders or len({os.path.abspath(f) for f in folders}) != len(folders):
        raise ValueError(f"paths must name at least one folder, each once, got {[str(f) for f in folders]}")
    for path in folders:
        _check_target(path, overwrite)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a folder")
        check_replaceable(path)  # before the work: a read-only old folder would fail its move or stay half-deleted
    with contextlib.ExitStack() as created:
        for path in folders:
            created.enter_context(removed_if_created(path.parent))
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
        with _replaced_as_a_whole(folders, overwrite) as tmps:
            yield tmps


def _through_link(path: Path) -> Path:
    """``path``, or the folder a symbolic link ``path`` names (see :func:`atomic_directory`)."""
    if not path.is_symlink():
        return path
    try:
        target = path.resolve()
    except RuntimeError as err:  # a loop of links
        raise NotADirectoryError(f"{path} is a symbolic link that names no folder ({err})") from None
    if not target.is_dir():
        raise NotADirectoryError(f"{path} is a symbolic link to {target}, which is not a folder: remove the link or "
                                 "point it to a folder")
    return target


@contextlib.contextmanager
def removed_if_created(folder: PathLike) -> Iterator[None]:
    """On an exception, remove ``folder`` and the ancestors of it that did not exist on entry (deepest first,
    while they are empty): a failed writer leaves no empty output folders behind.

    Args:
        folder: the folder the block may create (with its parents).
    """
    folder = check_path("folder", folder)
    created = [p for p in itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)) if p.parent != p]
    try:
        yield
    except BaseException:
        for path in created:
            try:
                path.rmdir()
            except OSError:  # holds something (or is gone): the ones above it stay too
                break
        raise


def _private_temporary(path: Path) -> Path:
    """A new temporary folder beside ``path``; it gets the setgid group of an existing ``path`` (files written into
    it meanwhile get that group) and stays private while it is written."""
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
    with contextlib.suppress(OSError):  # nothing there (or unreadable): the folder starts as mkdtemp makes it
        before = path.stat()
        if stat.S_ISDIR(before.st_mode) and before.st_mode & stat.S_ISGID:
            with contextlib.suppress(OSError):
                os.chown(tmp, -1, before.st_gid)
            os.chmod(tmp, 0o700 | stat.S_ISGID)
    return tmp


@contextlib.contextmanager
def _replaced_as_a_whole(paths: list[Path], overwrite: bool) -> Iterator[list[Path]]:
    tmps: list[Path] = []
    handles: list[int | None] = []
    olds: list[Path | None] = []
    try:
        for path in paths:
            tmps.append(_private_temporary(path))
            # held open, the folder's inode cannot be reused: a folder another process removed (and a writer
            # re-created) is told apart from this one; folders cannot be opened on every platform (Windows)
            try:
                handles.append(os.open(tmps[-1], os.O_RDONLY))
            except OSError:
                handles.append(None)
        yield list(tmps)
        for path, tmp, handle in zip(paths, tmps, handles, strict=True):
            if handle is not None and not _same_folder(handle, tmp):
                raise FileNotFoundError(f"the temporary folder {tmp} of {path} was removed by another process "
                                        "while it was written: nothing was published; run again")
            apply_umask(tmp)
            with contextlib.suppress(FileNotFoundError):
                replaced = path.stat()
                if stat.S_ISDIR(replaced.st_mode):
                    _take_permissions(tmp, replaced)
        try:
            for path, tmp in zip(paths, tmps, strict=True):
                olds.append(None)
                if path.exists():
                    if not overwrite:
                        raise WrittenMeanwhile(f"{path} appeared while writing (another process wrote it); not "
                                               "overwritten")
                    olds[-1] = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
                    os.replace(path, olds[-1] / path.name)
                os.replace(tmp, path)
        except BaseException as err:  # also Ctrl-C/SIGTERM between two renames: every old folder goes back
            _put_back(paths, tmps, handles, olds, err)
            if isinstance(err, OSError) and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise WrittenMeanwhile(f"{path} was written by another process meanwhile; not replaced") from err
            raise
    finally:
        for handle in handles:
            if handle is not None:
                os.close(handle)
        for leftover in (*tmps, *olds):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _put_back(paths: list[Path], tmps: list[Path], handles: list[int | None], olds: list[Path | None],
              err: BaseException) -> None:
    """Undo a replacement that ``err`` stopped: each new folder already renamed in goes back to its temporary (to
    be removed), each old folder moved aside goes back to its path; an old folder that cannot be put back is
    left where it is (its entry in ``olds`` cleared, so it is not removed) and named in the error."""
    kept = []
    for i in reversed(range(len(olds))):
        path, tmp, old = paths[i], tmps[i], olds[i]
        handle = handles[i]
        published = not os.path.lexists(tmp) if handle is None else _same_folder(handle, path)
        if published:
            with contextlib.suppress(OSError):
                os.replace(path, tmp)
        if old is not None and os.path.lexists(old / path.name) and not os.path.lexists(path):
            try:
                os.replace(old / path.name, path)
            except OSError:  # kept, and named, rather than removed with the temporaries
                olds[i] = None
                kept.append(f"{path} (the old folder is {old / path.name})")
    if kept:
        raise OSError(f"could not put back after a failed replacement: {'; '.join(kept)}") from err


def _same_folder(handle: int, path: Path) -> bool:
    """Whether ``path`` is still the folder opened as ``handle`` (not removed, not replaced)."""
    try:
        here = path.stat()
    except OSError:
        return False
    held = os.fstat(handle)
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)


def atomic_write(path: PathLike, writer: Callable[[IO[Any]], object], *, mode: str = "w",
                 overwrite: bool = True) -> Path:
    """Call ``writer(fileobj)`` on a temporary file and rename it onto ``path`` (fsynced).

    Text modes write UTF-8 whatever the machine's locale (reports declare it; CSV/JSON/YAML are read back as it).
    """
    check_instance("writer", writer, Callable, "a callable taking the open file")
    if check_instance("mode", mode, str, "a str") not in ("w", "wt", "wb"):
        raise ValueError(f"mode must be 'w' (text) or 'wb' (binary), got {mode!r}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_json(path: PathLike, obj: Any, *, overwrite: bool = True, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically (NumPy numbers and arrays as their values, paths as strings).

    NaN and infinities are written as Python's ``json`` writes them (``NaN``, ``Infinity``: read back by Python,
    refused by strict JSON readers); :func:`longiseg.metrics.report.write_json` writes strict JSON for reports.
    """
    if indent is not None:
        check_positive_int("indent", indent, minimum=0)
    return atomic_write(path, lambda fh: json.dump(obj, fh, indent=indent, default=_json_default),
                        overwrite=overwrite)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None, *, header: bool = True,
             decimals: int | None = None) -> str:
    """``rows`` as CSV text: the one cell format of every table longiseg writes.

    A key a row lacks and a NaN are empty cells (pandas, R and spreadsheets read those as missing; a ``nan``
    cell made R read the whole column as text), NumPy numbers are written as their values, infinities as
    ``inf``/``-inf``, and floats are rounded to ``decimals`` places when it is given. Lines end in ``\\n``.

    Args:
        rows: one mapping per row (column name -> value).
        columns: the columns in order; ``None``: every row's keys in the order they first appear.
        header: start with the line of column names.
        decimals: places floats are rounded to; ``None`` writes them as Python prints them.

    Raises:
        TypeError: a row is not a mapping, or ``decimals`` is not an int.
        ValueError: a row has a key that is not in ``columns``, or ``decimals`` is negative.
    """
    rows = list(rows)
    for i, r in enumerate(rows):
        check_instance(f"rows[{i}]", r, Mapping, "a mapping of column names to values")
    if decimals is not None:
        check_positive_int("decimals", decimals, minimum=0)
    names = list(dict.fromkeys(k for r in rows for k in r)) if columns is None else list(columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, restval="", lineterminator="\n")
    if header:
        writer.writeheader()
    known = set(names)
    for i, r in enumerate(rows):
        extra = [k for k in r if k not in known]
        if extra:
            raise ValueError(f"rows[{i}] has column(s) {extra} that are not in columns {names}")
        writer.writerow({k: _csv_cell(v, decimals) for k, v in r.items()})
    return buf.getvalue()


def _csv_cell(v: Any, decimals: int | None) -> Any:
    if isinstance(v, np.floating):  # its shortest decimal: float32 0.1 as 0.1, not 0.10000000149011612
        v = float(str(v))
    elif isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if decimals is not None and math.isfinite(v):
            return round(v, decimals)
    return v


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serialisable")


def atomic_save_figure(fig: Any, path: PathLike, *, dpi: int = 100, overwrite: bool = True, **savefig_kwargs: Any
                       ) -> Path:
    """Save a matplotlib figure as PNG atomically and close it (figures are never half-written or left open;
    a figure pyplot manages is closed there, one built without pyplot needs no closing).

    Args:
        fig: the ``matplotlib.figure.Figure``.
        path: destination ``.png``.
        dpi: resolution.
        overwrite: replace an existing file.
        **savefig_kwargs: passed to ``fig.savefig`` (e.g. ``facecolor``).
    """
    from matplotlib.figure import Figure

    check_instance("fig", fig, Figure, "a matplotlib.figure.Figure")
    check_positive_int("dpi", dpi)
    try:
        with atomic_path(path, overwrite=overwrite, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", **savefig_kwargs)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")  # never imported here: that could pick a backend
        if pyplot is not None:
            pyplot.close(fig)
    return Path(path)


def atomic_torch_save(obj: Any, path: PathLike, *, overwrite: bool = True, keep_permissions: bool = False) -> Path:
    """``torch.save`` to ``path`` atomically (checkpoints are never half-written); ``keep_permissions``: as in
    :func:`atomic_path`.

    The object is serialised in memory and written by Python, so a full disk is an ``OSError`` (ENOSPC) that
    the command line reports in one line, not torch's C++ "unexpected pos" error.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, overwrite=overwrite, keep_permissions=keep_permissions) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def __getattr__(name: str) -> Any:
    """``load_nifti`` and ``atomic_save_nifti`` lived here until 0.3.11; they are :mod:`longiseg.utils.nifti`'s."""
    if name in ("load_nifti", "atomic_save_nifti"):
        import importlib
        import warnings

        warnings.warn(f"longiseg.utils.io.{name} moved to longiseg.utils.nifti.{name} (0.3.12)", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module("longiseg.utils.nifti"), name)  # utils.nifti imports this module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
