"""Library logger and log-once helper."""

from __future__ import annotations

import logging

from longiseg.utils.validation import check_instance, check_positive_int

__all__ = ["LOG_FORMAT", "ProgressAwareHandler", "get_logger", "log_once", "show_log_records", "logging_setup",
           "apply_logging_setup"]

#: Format of the command line's log records (``INFO longiseg.module: message``).
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

_SEEN: set[tuple[str, str]] = set()


def get_logger(name: str = "longiseg") -> logging.Logger:
    """Return the library logger (``longiseg`` or a child such as ``longiseg.ssm``)."""
    check_instance("name", name, str, "a str logger name")
    if not name.startswith("longiseg"):
        name = f"longiseg.{name}"
    return logging.getLogger(name)


def log_once(logger: logging.Logger, key: str, message: str, level: int = logging.INFO) -> bool:
    """Log ``message`` the first time ``key`` is seen for ``logger`` in this process.

    Returns:
        Whether the message was emitted.
    """
    check_instance("logger", logger, (logging.Logger, logging.LoggerAdapter), "a logging.Logger")
    check_instance("key", key, str, "a str")
    check_positive_int("level", level, minimum=0)
    token = (logger.name, key)
    if token in _SEEN:
        return False
    _SEEN.add(token)
    logger.log(level, message)
    return True


class ProgressAwareHandler(logging.StreamHandler):
    """A stream handler (stderr by default) that writes each record above the progress bars being shown
    (``tqdm.write``): a record logged while a bar runs gets a line of its own instead of being appended to the
    bar's line, and the bar is drawn again below it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to write ``record``: not when a logger between its own and the one holding this handler shows it
        already with a handler of its own (nibabel's ``nibabel.global`` does: every nibabel warning was printed
        twice)."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and self not in logger.handlers:
            if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` with ``tqdm.write`` (above any progress bar), as ``StreamHandler.emit`` would."""
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def show_log_records(level: int) -> None:
    """Show longiseg's log records at ``level`` and above, and other libraries' warnings and errors, on stderr in
    :data:`LOG_FORMAT`, above any progress bar (:class:`ProgressAwareHandler`); nothing when the root logger has a
    handler already (as ``logging.basicConfig`` does).

    ``level`` is the ``longiseg`` logger's; the root logger stays at ``WARNING`` (or ``level`` when higher), so a
    debug level shows longiseg's debug records, not those of numba or matplotlib (tens of thousands of lines).
    """
    check_positive_int("level", level, minimum=0)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = ProgressAwareHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    get_logger().setLevel(level)


def logging_setup() -> int | None:
    """The level of the library logger where this process shows log records (its root logger has a handler, as
    the command line sets up), else ``None``: what :func:`apply_logging_setup` repeats in a worker process."""
    if not logging.getLogger().handlers:
        return None
    return get_logger().getEffectiveLevel()


def apply_logging_setup(level: int | None) -> None:
    """In a worker process started by ``spawn``: show log records at ``level`` (from :func:`logging_setup` of the
    parent) with :data:`LOG_FORMAT`, as the parent does; nothing when ``level`` is ``None`` or records are shown
    already."""
    if level is not None:
        show_log_records(level)
