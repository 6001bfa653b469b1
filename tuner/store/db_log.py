"""MLflow's SQL store logs each database error it catches, with its traceback (about 80 lines),
before it raises the error again as an MlflowException, which `tuner` names in one line: the
log record is kept off the console."""

from __future__ import annotations

import logging

DB_LOGGER = "mlflow.store.db.utils"  # MLflow's managed sessions: `_logger.exception(...)`


def _raised_again(record: logging.LogRecord) -> bool:
    """A filter: False for a record that carries a traceback (the error is raised after it)."""
    return record.exc_info is None


def quiet_database_tracebacks() -> None:
    """Drop MLflow's log record of a database error it raises (a read-only sqlite file, say).
    Idempotent."""
    logger = logging.getLogger(DB_LOGGER)
    if _raised_again not in logger.filters:
        logger.addFilter(_raised_again)
