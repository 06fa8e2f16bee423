"""Deprecated: this module is :mod:`longiseg.data.crops` since 0.3.28 (where a sample is cut, as opposed to the
batch samplers of :mod:`longiseg.data.samplers`); importing it warns and gives that module's names."""

from __future__ import annotations

import warnings

from longiseg.data.crops import *  # noqa: F403 - the moved module's names, for old imports
from longiseg.data.crops import __all__  # noqa: F401

warnings.warn("longiseg.data.sampling moved to longiseg.data.crops (0.3.28)", DeprecationWarning, stacklevel=2)
