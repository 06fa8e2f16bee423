"""Waiting on other processes in tests: by polling their state with a deadline, never by sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (Linux; a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``done`` until it holds; fail the test naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s")
        time.sleep(0.05)
