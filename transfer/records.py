"""Result records: one JSON line per evaluation, appended under a lock to ``results.jsonl``.

Methods log test metrics as ``<split>/<target>/<metric>`` (e.g. ``test/sketch/acc``) or, for the pooled
source split, ``<split>/<metric>`` (e.g. ``val/acc``). :func:`rows_from_metrics` turns those keys into
rows that all look alike, whatever the method.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from datamodules.files import append_locked, atomic_write_text, file_lock


def append_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]], replace: Sequence[str] | None = None) -> None:
    """Append rows as whole lines under an exclusive lock (``fcntl``; safe with many processes, and on NFS
    where the lock daemon runs). With ``replace`` (key names), existing rows equal to a new row on those keys are
    dropped first, so a resumed or repeated evaluation never duplicates rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = [json.dumps(dict(r), sort_keys=True, default=_json_default) + "\n" for r in rows]
    with file_lock(path):
        if replace and path.exists():
            keys = {tuple(json.loads(line).get(k) for k in replace) for line in new}
            old = path.read_text().splitlines(keepends=True)
            kept = [line for line in old if line.strip() and tuple(json.loads(line).get(k) for k in replace) not in keys]
            if len(kept) != len(old):
                atomic_write_text(path, "".join(kept) + "".join(new))
                return
        append_locked(path, "".join(new))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to results.jsonl")


def git_commit(package_dir: Path | None = None) -> str | None:
    """The commit of the source checkout this package runs from, if any. An installed copy (site-packages) has
    none, even when an enclosing folder is some other git repository (e.g. a pyenv clone): the checkout's top
    level must be the package's parent folder."""
    repo = (package_dir or Path(__file__).resolve().parent).parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != repo.resolve():
        return None
    return lines[1]


def rows_from_metrics(
    metrics: Mapping[str, Any],
    *,
    split: str,
    base: Mapping[str, Any],
    pooled_target: str | None,
) -> list[dict]:
    """Group ``<split>/<target>/<metric>`` keys into one row per target; ``<split>/<metric>`` keys go to
    ``pooled_target`` (skipped when None, e.g. a monitor key that repeats a per-target value)."""
    per_target: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if parts[0] != split or len(parts) < 2 or (len(parts) == 2 and pooled_target is None):
            continue
        target, name = (pooled_target, parts[1]) if len(parts) == 2 else (parts[1], "/".join(parts[2:]))
        per_target.setdefault(target, {})[name] = float(value)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return [
        {**base, "split": split, "target": target, "metrics": m, "time": now}
        for target, m in sorted(per_target.items())
    ]


def write_summary(datamodule, path: str | Path) -> dict[str, Any]:
    """The data module's ``data_summary()`` (layout, counts, classes, drops, fallbacks) as JSON at ``path``."""
    summary = datamodule.data_summary()
    atomic_write_text(path, json.dumps(summary, indent=1, default=str) + "\n")
    return summary
