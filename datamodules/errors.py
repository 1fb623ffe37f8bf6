"""Errors and file checks shared by every reader: each error names the file and the problem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


class DatasetError(RuntimeError):
    """A dataset on disk is missing or malformed; the message names the file and the problem."""


def read_json(path: str | Path, what: str = "file"):
    """Parsed JSON; a missing or malformed file is a DatasetError naming it (``what``: annotation file, ...)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def check_files_exist(paths: Iterable[str | os.PathLike], what: str, listed_in: str | Path | None = None) -> None:
    """One stat per file, before any training: missing files are an error naming them (and how many)."""
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        where = f" listed in {listed_in}" if listed_in else ""
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DatasetError(f"{len(missing)} {what} file(s){where} missing: {', '.join(missing[:3])}{more}")
