"""Logging with the rank in the prefix, so interleaved output of many ranks stays readable."""

from __future__ import annotations

import logging
import sys

from coordinator import topology

_HANDLER_ATTR = "_pt2cc_handler"


def rank() -> int:
    return topology.this_process().rank


def setup(level: str = "INFO") -> None:
    """Give our loggers one stderr handler with a `[pt2cc rank R HH:MM:SS.mmm]` prefix
    (idempotent).

    The application's own logging configuration is left alone: we attach to our two
    package loggers only and do not propagate, so records are not printed twice.
    """
    fmt = logging.Formatter(f"[pt2cc rank {rank()} %(asctime)s.%(msecs)03d] %(levelname)s "
                            "%(message)s", datefmt="%H:%M:%S")
    for name in ("coordinator", "storage"):
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if any(getattr(h, _HANDLER_ATTR, False) for h in logger.handlers):
            continue
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        setattr(handler, _HANDLER_ATTR, True)
        logger.addHandler(handler)
        logger.propagate = False
