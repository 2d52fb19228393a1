"""structlog configuration shared by every DiSRouter process: JSON lines or a console view."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]


class StderrLogger:
    """Prints each line to whatever ``sys.stderr`` is when it logs, not when it was made.

    structlog's PrintLogger keeps the file it was given; a process that swaps stderr (pytest's
    capture, a daemon redirecting its streams) would leave it writing to a closed file.
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def _stderr_logger(*_args: object) -> StderrLogger:
    return StderrLogger()


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    """Log to stderr as JSON lines (default) or for people; contextvars (node_id, query_id) included."""
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (transformers, nats) stay quiet below warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
