"""Claims on output folders and cases: several ``longiseg predict`` processes sharing one output folder each predict a
case only after claiming it, so that no case is predicted twice and none is left out; a run that writes a folder
alone (``predict`` without ``--skip-existing``, ``register``, ``train`` and ``tune`` in a run folder) claims the
folder, so that a second one does not mix its outputs with the first's.

A claim is a hidden file beside the case folders (``.CASE.claim``), created atomically and holding the host, pid,
process start time, the command that holds it, a digest of what it writes (a case's claim) and a random token; a
claim whose process is gone (this host) or older than a day (another host) is abandoned and taken over by exactly
one of the processes that find it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longiseg.data.layout import check_case_id
from longiseg.utils.io import PathLike, host_tag, process_start_time, writer_ended
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import check_instance, check_path

__all__ = ["FOLDER_CLAIM", "claim_case", "claim_folder", "check_folder_unclaimed", "release_claim", "claim_holder"]

logger = get_logger(__name__)


def _claim_path(out_dir: Path, case_id: str) -> Path:
    """The claim file of a case: hidden and beside the case folders, so readers of the predictions (and
    :func:`~longiseg.inferers.predict.predict_folder`'s check for files it does not write) never see it."""
    return out_dir / f".{case_id}.claim"


def _read_claim(path: Path) -> dict[str, Any] | None:
    """The claim in ``path`` (``{"host", "pid", "started", "token"}``), ``None`` when unreadable (being written, or not
    ours); ``FileNotFoundError`` when gone."""
    try:
        claim = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None
    return claim if isinstance(claim, dict) else None


def _claim_alive(path: Path, claim: dict[str, Any] | None) -> bool:
    """Whether ``claim`` (read from ``path``) is held by a live process
    (:func:`~longiseg.utils.io.writer_ended`: on this host when its process exists; of another host, or
    unreadable, until a day after it was made)."""
    pid = None if claim is None else claim.get("pid")
    if claim is None or isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return not writer_ended(path, 0, "unreadable")
    host = host_tag() if claim.get("host") == socket.gethostname() else f"host {claim.get('host')}"
    started = claim.get("started")
    return not writer_ended(path, pid, host, started if isinstance(started, int) else None)


def claim_holder(claim: Mapping[str, Any] | None) -> str:
    """``pid PID on HOST`` of a claim, for messages."""
    return f"pid {claim.get('pid')} on {claim.get('host')}" if claim else "unknown"


def _holder_command(claim: Mapping[str, Any] | None) -> str:
    """The command a claim records (``"longiseg register"``), or ``"longiseg run"`` for one that records none
    (longiseg < 0.3.19, or unreadable)."""
    command = None if claim is None else claim.get("command")
    return command if isinstance(command, str) and command else "longiseg run"


def claim_case(out_dir: PathLike, case_id: str, command: str = "longiseg predict", *,
               producer: str | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Claim ``case_id`` for this process: create its claim file (:func:`_claim_path`) atomically, holding this
    host, pid, the process' start time (a reused pid is another process), ``command``, ``producer`` and a token. A
    claim whose process is gone (:func:`_claim_alive`) is taken over.

    Args:
        out_dir: the prediction folder (created if missing).
        case_id: the case (a single folder name).
        command: what claims it, for other processes' messages.
        producer: what the claimer writes (a digest of its model and settings,
            :func:`~longiseg.inferers.provenance.producer_digest`), for workers to compare; ``None`` records none.

    Returns:
        ``(path, claim)`` when claimed; ``(None, holder's claim or {})`` when a live process holds the case.
    """
    out_dir = check_path("out_dir", out_dir)
    check_instance("command", command, str, "a str")
    if producer is not None:
        check_instance("producer", producer, str, "a str")
    return _create_claim(_claim_path(out_dir, check_case_id(case_id)), f"case {case_id}", command,
                         {} if producer is None else {"producer": producer})


#: The claim file of a run that writes a whole output folder alone; a case's claim ends in ``.claim``, so no case id
#: gives this name.
FOLDER_CLAIM = ".longiseg-folder.lock"


def claim_folder(out_dir: PathLike, command: str) -> tuple[Path, dict[str, Any]]:
    """Claim the folder ``out_dir`` for a run that writes it alone (``longiseg predict`` without
    ``--skip-existing``, ``longiseg register``), so that two such runs do not mix their outputs case by case: a
    live process holding the folder, or a case in it (:func:`claim_case`: workers sharing it), refuses the claim.
    Release it with :func:`release_claim`.

    Args:
        out_dir: the output folder (created if missing).
        command: what claims it, for the message (``"longiseg predict"``).

    Raises:
        FileExistsError: another live process writes into ``out_dir``, named.
    """
    out_dir = check_path("out_dir", out_dir)
    check_instance("command", command, str, "a str")
    path, claim = _create_claim(out_dir / FOLDER_CLAIM, str(out_dir), command)
    if path is None:
        raise FileExistsError(f"{out_dir} is being written by another {_holder_command(claim)} "
                              f"({claim_holder(claim)}); wait for it to finish, or choose another output folder")
    for case_claim in out_dir.glob(".*.claim"):
        with contextlib.suppress(FileNotFoundError):
            held = _read_claim(case_claim)
            if _claim_alive(case_claim, held):
                release_claim(path, claim)
                raise FileExistsError(f"{out_dir} is being written by processes sharing it ({_holder_command(held)}, "
                                      f"{claim_holder(held)} holds {case_claim.name}); wait for them to finish, "
                                      "or choose another output folder")
    return path, claim


def check_folder_unclaimed(out_dir: PathLike) -> None:
    """Refuse to share ``out_dir`` (:func:`claim_case`) while a run that writes it alone holds it
    (:func:`claim_folder`). A process sharing it checks before its first case and again after claiming each case:
    a run that claims the folder meanwhile then sees that case's claim, or this check sees the folder's.

    Raises:
        FileExistsError: a live process holds the folder, named with its command.
    """
    out_dir = check_path("out_dir", out_dir)
    path = out_dir / FOLDER_CLAIM
    with contextlib.suppress(FileNotFoundError):
        held = _read_claim(path)
        if _claim_alive(path, held):
            raise FileExistsError(f"{out_dir} is being written by another {_holder_command(held)} "
                                  f"({claim_holder(held)}), which does not share it (no --skip-existing); wait for it "
                                  "to finish, or choose another output folder")


def _create_claim(path: Path, what: str, command: str, extra: Mapping[str, Any] | None = None
                  ) -> tuple[Path | None, dict[str, Any]]:
    """Create the claim file ``path`` atomically for this process (see :func:`claim_case`), taking over an abandoned
    one; ``what`` names the claimed thing in the log, ``command`` the claiming command in the file, ``extra`` what
    else the file records."""
    out_dir = path.parent
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start_time(os.getpid()),
            "command": command, **(extra or {}), "token": uuid.uuid4().hex}
    for _ in range(5):
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        except FileNotFoundError:  # out_dir removed meanwhile (a failed run that created it): again
            continue
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(mine, fh)
            return path, mine
        try:
            held = _read_claim(path)
        except FileNotFoundError:  # released meanwhile: again
            continue
        if _claim_alive(path, held):
            return None, held or {}
        # abandoned: take it aside under a name of our own, so that of several processes taking it over at once
        # only one removes it (and none another's new claim)
        aside = path.with_name(f"{path.name}.{mine['token']}.abandoned")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        try:
            taken = _read_claim(aside)
            if taken != held:  # a new claim made after the abandoned one was removed: give it back
                with contextlib.suppress(OSError):
                    os.link(aside, path)
                return None, taken or {}
        finally:
            with contextlib.suppress(OSError):
                aside.unlink()
        logger.info("%s: taking over the abandoned claim of %s", what, claim_holder(held))
    return None, {}


def release_claim(path: PathLike, claim: Mapping[str, Any]) -> None:
    """Remove the claim file ``path`` (from :func:`claim_case`) if it still holds ``claim`` (not one that another
    process took over meanwhile); nothing happens when it is gone."""
    path = check_path("path", path)
    with contextlib.suppress(OSError):
        if _read_claim(path) == claim:
            path.unlink()
