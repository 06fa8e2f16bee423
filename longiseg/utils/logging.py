"""Library logger and log-once helper."""

from __future__ import annotations

import logging

__all__ = ["get_logger", "log_once"]

_SEEN: set[tuple[str, str]] = set()


def get_logger(name: str = "longiseg") -> logging.Logger:
    """Return the library logger (``longiseg`` or a child such as ``longiseg.ssm``)."""
    if not name.startswith("longiseg"):
        name = f"longiseg.{name}"
    return logging.getLogger(name)


def log_once(logger: logging.Logger, key: str, message: str, level: int = logging.INFO) -> bool:
    """Log ``message`` the first time ``key`` is seen for ``logger`` in this process.

    Returns:
        Whether the message was emitted.
    """
    token = (logger.name, key)
    if token in _SEEN:
        return False
    _SEEN.add(token)
    logger.log(level, message)
    return True
