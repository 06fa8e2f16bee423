"""Networks: reusable ``blocks`` and complete ``nets`` (registered models)."""

from longiseg.networks.output import LongitudinalOutput

__all__ = ["LongitudinalOutput"]
