"""Logging set-up (loguru): one place for the format and level. The library never prints."""

from __future__ import annotations

import os
import sys

from loguru import logger

__all__ = ["configure_logging"]


def configure_logging(level: str | None = None, *, tag: str = "") -> None:
    """Send logs to stderr at ``level`` (default: ``$CHRONOFABRIC_LOG`` or INFO), each line tagged."""
    level = (level or os.environ.get("CHRONOFABRIC_LOG") or "INFO").upper()
    logger.enable("fabric")
    logger.enable("workers")
    logger.remove()
    prefix = f"{tag} " if tag else ""
    logger.add(
        sys.stderr,
        level=level,
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> " + prefix + "{name}: {message}",
        backtrace=False,
        diagnose=False,
    )
