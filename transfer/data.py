"""``python -m transfer.data check experiment=NAME [overrides]``: what an experiment would read, before any GPU hour.

Runs only the experiment's data setup (no model, no weights; a CLIP-embedding module is checked through the image
domains it wraps), prints the layout found, counts per split, the class names in label order, items dropped by
reason, the comparison with the release's published counts and every fallback taken, and writes the same as
``data_summary.json`` in the run folder. Every training run writes that file beside its ``results.jsonl``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from transfer import experiments
from transfer.records import atomic_write_text

experiments.register()


def summary_of(datamodule) -> dict[str, Any] | None:
    return datamodule.data_summary() if hasattr(datamodule, "data_summary") else None


def write_summary(datamodule, path: str | Path) -> dict[str, Any] | None:
    summary = summary_of(datamodule)
    if summary is not None:
        atomic_write_text(path, json.dumps(summary, indent=1, default=str) + "\n")
    return summary


class DataSummaryWriter(L.Callback):
    """Writes ``data_summary.json`` once the datamodule is set up (rank 0)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and trainer.datamodule is not None:
            write_summary(trainer.datamodule, self.path)


def data_only(cfg: DictConfig):
    """The experiment's data module without anything that needs weights: an embedding module (``encoder``) is
    replaced by the image-domain module it wraps."""
    node = cfg.data
    if "encoder" in node and "domains" in node:
        node = node.domains
    return instantiate(node, _convert_="all")


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"layout: {s.get('layout')}"]
    for split, counts in s.get("splits", {}).items():
        lines.append(f"  {split:<22} " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    if s.get("classes") is not None:
        cls = s["classes"]
        shown = ", ".join(f"{i}:{c}" for i, c in enumerate(cls[:12])) + (f", … ({len(cls)} classes)" if len(cls) > 12 else "")
        lines.append(f"classes (label order{', ' + s['class_source'] if s.get('class_source') else ''}): {shown}")
    for reason, n in (s.get("dropped") or {}).items():
        lines.append(f"dropped: {n:,} {reason}")
    for key, v in (s.get("official") or {}).items():
        ok = "ok" if v["expected"] == v["found"] else "DIFFERS"
        lines.append(f"official count {key}: expected {v['expected']:,}, found {v['found']:,} [{ok}]")
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def check(cfg: DictConfig) -> dict[str, Any]:
    dm = data_only(cfg)
    if getattr(dm, "fold", None) == "all":  # every fold's size is in the summary; the split shown is fold 0's
        dm.fold = 0
    dm.prepare_data()
    dm.setup("fit")
    summary = summary_of(dm)
    if summary is None:
        raise SystemExit(f"{type(dm).__name__} has no data_summary(): nothing to report")
    out = Path(cfg.paths.output_dir) / "data_summary.json"
    write_summary(dm, out)
    print(f"{cfg.experiment_name}: {type(dm).__name__}\n{format_summary(summary)}\n-> {out}")
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _main(cfg: DictConfig) -> None:
    check(cfg)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] != "check":
        raise SystemExit("usage: python -m transfer.data check experiment=NAME [overrides]")
    del sys.argv[1]
    _main()


if __name__ == "__main__":
    main()
