"""``read_table``: the one reader of user CSV tables (cohorts, split tables, slide lists), with one-line errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from milkit.errors import DataError

__all__ = ["read_table"]


def read_table(path: str | os.PathLike, what: str, required: Iterable[str] = (),
               dtype: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read a CSV that must exist, have a header with the ``required`` columns and at least one row; otherwise
    raise a ``DataError`` naming the file (``what`` says which table it is, e.g. "cohort CSV")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        table = pd.read_csv(path, dtype=dtype)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: {what} is empty (no columns)") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({str(exc).strip().splitlines()[0]})") from None
    missing = sorted(set(required) - set(table.columns))
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {missing} (found {', '.join(map(str, table.columns))})")
    if table.empty:
        raise DataError(f"{path}: {what} has a header but no rows")
    return table
