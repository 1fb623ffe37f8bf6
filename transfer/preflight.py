"""Before a run creates anything: every weights file, dataset path and required setting the composed config needs,
checked at once. Anything missing stops the command with one message that lists all of it, each with its fix,
exit code 2, no traceback (``HYDRA_FULL_ERROR=1`` shows one) and no run folder.

Used by ``transfer.train`` / ``transfer.eval`` (as a Hydra callback, which runs before Hydra makes the run folder),
``transfer.data check`` and ``transfer.predict``."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from transfer.weights import RANDOM, WeightsError

# keys whose string value names weights (a registered name or a file); ``random`` asks for a random init
WEIGHT_KEYS = {"weights", "pretrained", "source_model", "translator_weights"}
# keys of a data config whose value is a path that must exist before setup
DATA_KEYS = {"root", "datalist", "folds_file", "protocol", "audio_dir"}
EXIT_MISSING = 2
ENV_FETCH = "TRANSFER_FETCH_WEIGHTS"
log = logging.getLogger("transfer")


@dataclass(frozen=True)
class Missing:
    kind: str        # weights | data | setting | checkpoint
    key: str         # where in the config
    value: str       # the name or path asked for
    detail: str      # what is expected, where
    name: str = ""   # a registered weights name that can be fetched


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; a value that cannot resolve here (``${hydra:...}``) is skipped, a
    mandatory value never set (``???``) is yielded as MissingMandatoryValue."""
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for k in keys:
        key = f"{prefix}.{k}" if prefix else str(k)
        try:
            value = node[k]
        except MissingMandatoryValue as e:
            yield key, e
            continue
        except InterpolationResolutionError:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            yield from _leaves(value, key)
        else:
            yield key, value


def _weights_problem(key: str, value: str, registry, root: Path) -> Missing | None:
    entry = registry.get(value)
    if entry is not None:
        path = root / entry.file
        downloadable = bool(entry.url or entry.hf_repo)
        if path.exists():
            return None
        how = "" if downloadable else f"; obtain it from {entry.source or entry.hub} (not downloadable)"
        return Missing("weights", key, value, f"expected at {path}{how}", name=value if downloadable else "")
    if value == RANDOM or Path(value).exists():
        return None
    if Path(value).suffix or "/" in value:
        return Missing("weights", key, value, "no such file")
    return Missing("weights", key, value, "neither a file nor a name in weights/registry.yaml")


def missing_assets(cfg: DictConfig, weights: bool = True, data: bool = True) -> list[Missing]:
    """Everything ``cfg`` needs that is not here (nothing is created, nothing is downloaded)."""
    from transfer.weights import load_registry, weights_dir

    registry, root = load_registry(), weights_dir()
    out: list[Missing] = []
    groups = [g for g, on in (("model", weights), ("data", data or weights)) if on and g in cfg]
    for group in groups:
        for key, value in _leaves(cfg[group], group):
            leaf = key.rsplit(".", 1)[-1]
            if isinstance(value, MissingMandatoryValue):
                if group == "model" or data:
                    out.append(Missing("setting", key, "???", f"required and not set (add {key}=... to the command)"))
            elif not isinstance(value, str):
                continue
            elif weights and (value in registry or (leaf in WEIGHT_KEYS and value)):
                problem = _weights_problem(key, value, registry, root)
                if problem and leaf == "source_model":  # few-shot SFDA's stage 1 writes it
                    src = f"sfda_source_{OmegaConf.select(cfg, 'data.dataset')}_{OmegaConf.select(cfg, 'data.source')}"
                    problem = Missing("weights", key, value, f"no source model there: train it first with "
                                      f"python -m transfer.train experiment={src}")
                out += [problem] if problem else []
            elif data and group == "data" and leaf in DATA_KEYS and not Path(value).exists():
                out.append(Missing("data", key, value, "does not exist"))
    ckpt = cfg.get("ckpt_path") if weights else None
    if ckpt and not Path(ckpt).exists():
        out.append(Missing("checkpoint", "ckpt_path", str(ckpt), f"{ckpt}: no such file"))
    return out


def fetch_requested(cfg: DictConfig) -> bool:
    """``weights.fetch=true`` on the command line, or ``TRANSFER_FETCH_WEIGHTS=1`` in the environment."""
    env = os.environ.get(ENV_FETCH, "").lower() in ("1", "true", "yes")
    return env or bool(OmegaConf.select(cfg, "weights.fetch", default=False))


def prefetch(cfg: DictConfig) -> list[str]:
    """When fetching was asked for: download (and verify) every registered weights file the config names that is
    not here yet, before anything else. Returns the names fetched."""
    if not fetch_requested(cfg):
        return []
    from transfer.weights.fetch import fetch

    names = list(dict.fromkeys(m.name for m in missing_assets(cfg, data=False) if m.kind == "weights" and m.name))
    for name in names:
        fetch(name)
    return names


def layout_tree(path: str) -> list[str]:
    """The lines of datamodules/README.md's layout trees for the dataset ``path`` lies in (matched on a folder
    name of the path, e.g. ``data/FLIR_aligned`` -> ``FLIR_aligned/``); empty when none matches."""
    try:
        text = resources.files("datamodules").joinpath("README.md").read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return []
    blocks, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
        elif inside:
            blocks[-1].append(line)
    for part in Path(path).parts:
        lines, take = [], False
        for block in blocks:
            for line in block:
                if line and not line[0].isspace():
                    take = line.split()[0].split("/")[0] == part
                if take:
                    lines.append(line)
        if lines:
            return lines
    return []


def format_missing(missing: list[Missing], experiment: str, overrides: list[str] | None = None) -> str:
    """One message for everything missing. ``overrides``: the command's, when it was ``experiment=NAME [...]``
    (then the weights fix is ``fetch --experiment NAME`` where the overrides do not change the weights)."""
    n = len(missing)
    lines = [f"{experiment} cannot start: {n} thing{'s' if n > 1 else ''} missing. Nothing was created.", ""]
    weights = [m for m in missing if m.kind == "weights"]
    if weights:
        lines.append("weights:")
        lines += [f"  - {m.value} ({m.key}): {m.detail}" for m in weights]
        names = sorted({m.name for m in weights if m.name})
        if names:
            plain = overrides is not None and not [o for o in overrides
                                                   if not o.startswith(("experiment=", "paths.", "trainer"))]
            cmd = f"--experiment {experiment}" if plain and experiment != "default" else " ".join(names)
            lines.append(f"  fix: python -m transfer.weights fetch {cmd}   (or add weights.fetch=true to this command)")
        lines.append("")
    data = [m for m in missing if m.kind == "data"]
    if data:
        lines.append("data:")
        lines += [f"  - {m.value} ({m.key}): {m.detail}" for m in data]
        shown: set[tuple[str, ...]] = set()
        for m in data:
            tree = tuple(layout_tree(m.value))
            if tree and tree not in shown:
                shown.add(tree)
                lines.append("  expected layout (datamodules/README.md):")
                lines += [f"    {t}" for t in tree]
        lines.append("  fix: place the dataset there, or point paths.data_dir=... (or TRANSFER_DATA_DIR) at the folder "
                     "that holds it")
        lines.append("")
    for m in missing:
        if m.kind in ("setting", "checkpoint"):
            lines.append(f"{m.kind} {m.key}: {m.detail}")
    return "\n".join(lines).rstrip() + "\n"


def stop_if_missing(cfg: DictConfig, experiment: str, overrides: list[str] | None = None, weights: bool = True,
                    data: bool = True) -> None:
    missing = missing_assets(cfg, weights=weights, data=data)
    if missing:
        stop(format_missing(missing, experiment, overrides))


class MissingAssetsError(RuntimeError):
    """Raised instead of a plain exit when ``HYDRA_FULL_ERROR=1`` asks for tracebacks."""


def stop(message: str) -> None:
    """End the command with ``message`` on stderr and exit code 2 (with ``HYDRA_FULL_ERROR=1``: an exception)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise MissingAssetsError(message)
    print(message, file=sys.stderr, end="", flush=True)
    raise SystemExit(EXIT_MISSING)


class Preflight(Callback):
    """Hydra callback: checks the composed config before Hydra creates the run (or sweep) folder."""

    def _check(self, config: DictConfig, config_name: str | None) -> None:
        from transfer.experiments import renamed_note

        overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        if renamed_note(overrides):
            print(renamed_note(overrides), file=sys.stderr, flush=True)
        try:
            prefetch(config)
        except WeightsError as e:
            stop(f"error: {e}\n")
        missing = missing_assets(config)
        if config_name == "eval" and not config.get("ckpt_path"):  # else the model is scored at its initial weights
            missing.append(Missing("setting", "ckpt_path", "", "python -m transfer.eval needs ckpt_path=PATH (the "
                                   "checkpoint to evaluate)"))
        if missing:
            stop(format_missing(missing, str(config.get("experiment_name", "default")), overrides))

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        self._check(config, config_name)

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        self._check(config, config_name)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors about the user's files and settings (each names the file and the problem), not bugs."""
    from datamodules.errors import DatasetError
    from transfer.methods.sfda.source import MissingSourceModelError
    from transfer.weights import WeightsError
    from transfer.safeload import CheckpointFileError
    from transfer.statedict import StateDictMismatchError

    return (DatasetError, WeightsError, CheckpointFileError, StateDictMismatchError, MissingSourceModelError)


@contextmanager
def expected_errors() -> Iterator[None]:
    """An expected error (missing or malformed data, weights, checkpoints) ends the command with its message and
    exit code 2 instead of a traceback; ``HYDRA_FULL_ERROR=1`` lets the traceback through."""
    try:
        yield
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        expected, cause = _expected_errors(), error
        while cause is not None and not isinstance(cause, expected):  # Hydra wraps errors raised in a _target_
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        message = f"{type(cause).__name__}: {cause}"
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
        for handler in logging.getLogger().handlers:  # the run's log file keeps it; the terminal gets it once
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"error: {message}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_MISSING) from None
