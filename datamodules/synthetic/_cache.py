"""Generated datasets are built once per setting: in a temporary folder renamed into place when complete."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..files import content_key, publish


def cache_key(settings: dict) -> str:
    return content_key(settings, 10)


@contextmanager
def build_once(root: Path, meta: dict) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it gets ``meta.json`` and becomes ``root`` atomically (when a
    concurrent builder finished first, its result stays). Callers skip the build when ``root/meta.json`` exists."""
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            publish(tmp, root)
        except OSError:  # a concurrent builder's folder is there already
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
