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


def _query(db: Path | str, sql: str, params: tuple = ()) -> list[tuple] | None:
    """The rows of ``sql`` through a read-only sqlite3 connection (it can create nothing); None while
    ``db`` does not exist or its tables are not there yet / being written."""
    db = Path(str(db).removeprefix("sqlite:///"))
    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute(sql, params).fetchall()
    except sqlite3.Error:
        return None


def study_ready(db: Path | str) -> bool:
    """True once `db` exists and its Optuna schema is complete (the alembic version row is written last)."""
    rows = _query(db, "SELECT COUNT(*) FROM alembic_version")
    return rows is not None and rows[0][0] > 0


# A trial is "fresh after a pruned one" when it is RUNNING, the searcher has suggested all its params
# (the "tune_trial_id" user attribute is set), it has reported no epoch yet (no intermediate value),
# and the trial just before it was PRUNED before it started.
FRESH_AFTER_PRUNED = """
SELECT t.number FROM trials t
JOIN studies s ON s.study_id = t.study_id
JOIN trials p ON p.study_id = t.study_id AND p.number = t.number - 1
WHERE s.study_name = ? AND t.state = 'RUNNING' AND p.state = 'PRUNED'
  AND p.datetime_complete < t.datetime_start
  AND EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND a."key" = 'tune_trial_id')
  AND NOT EXISTS (SELECT 1 FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id)
"""


def fresh_after_pruned(db: Path | str, study_name: str) -> list[int]:
    """Numbers of the trials fresh after a pruned one (see above), in ~1 ms: cheap enough to poll every
    few ms (Optuna's load_study takes ~35-400 ms, longer than the window this catches: a trial's start
    to its first epoch, ~0.3-0.6 s). Read-only, so it cannot race the driver creating the schema."""
    return [row[0] for row in _query(db, FRESH_AFTER_PRUNED, (study_name,)) or []]
