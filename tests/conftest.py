"""Shared pytest configuration: the slow marker, seeding and small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

# The library's switches start unset, whatever the shell that runs the tests has exported (a developer's
# LONGISEG_SCAN_BACKEND=triton or LONGISEG_DEBUG_CHECKS=1 would change what many tests check); tests that
# exercise a switch set it themselves. Subprocesses started by tests inherit this cleaned environment.
for _name in [n for n in os.environ if n.startswith("LONGISEG_")]:
    del os.environ[_name]

# Tests run on tiny tensors, where one intra-op thread is fastest (and pytest-xdist-free CI has 2 cores).
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip_slow = pytest.mark.skip(reason="slow test; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state (fresh random inputs, but reproducible failures)."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def live_pid() -> Iterator[int]:
    """The pid of another live process on this host (a sleeping child): what a test's claim or lock names as its
    holder. The test process's parent was used, which does not exist when pytest itself is process 1 (a
    container without an init process)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()
