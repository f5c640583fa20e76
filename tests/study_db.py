"""Peeking at an Optuna SQLite study that another process (the `e2i tune` driver) is creating.

Opening the file with Optuna (`load_study`) while the driver creates it races on the schema: both
processes see no `alembic_version` row and both insert one -> `IntegrityError: UNIQUE constraint failed:
alembic_version.version_num`, in whichever process lost (CI saw the driver lose). So a poll first checks,
through a read-only sqlite3 connection that can create nothing, that the schema is stamped.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def study_ready(db: Path | str) -> bool:
    """True once `db` exists and its Optuna schema is complete (the alembic version row is written last)."""
    db = Path(str(db).removeprefix("sqlite:///"))
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT COUNT(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:  # tables not there yet, or the file is being written
        return False
