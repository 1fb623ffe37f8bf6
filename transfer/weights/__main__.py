"""``python -m transfer.weights list | check [NAME...] | fetch NAME... | fetch --experiment NAME | hash FILE |
lock [NAME... | --experiment NAME]``."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from transfer.weights import LOCK_FILE, WeightsEntry, WeightsError, load_lock, load_registry, sha256sum, verify, weights_dir


def names_in_experiment(experiment: str, overrides: list[str] | None = None) -> list[str]:
    """Registered weights names an experiment refers to (any string value of its composed config)."""
    from omegaconf import OmegaConf

    from transfer import experiments

    cfg = experiments.compose([f"experiment={experiment}", *(overrides or [])])
    registry, found = load_registry(), []

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and node in registry and node not in found:
            found.append(node)

    walk(OmegaConf.to_container(cfg, resolve=False))
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.weights list | check [NAME...] | fetch NAME... | fetch --experiment NAME | hash FILE |
    lock [NAME... | --experiment NAME]``."""
    import argparse

    from transfer.weights import fetch as fetching

    parser = argparse.ArgumentParser(prog="python -m transfer.weights")
    parser.add_argument("command", choices=["list", "check", "fetch", "hash", "lock"])
    parser.add_argument("names", nargs="*", help="registered names (hash: a file)")
    parser.add_argument("--experiment", help="fetch every weight this experiment needs")
    parser.add_argument("--registry", help="another registry.yaml")
    parser.add_argument("--root", help="another weights folder")
    args = parser.parse_args(argv)
    registry = load_registry(args.registry)
    root = Path(args.root) if args.root else weights_dir()
    if args.command == "list":
        lock = load_lock(root)
        for entry in registry.values():
            how = {"sha256": f"sha256 {entry.sha256}", "hub": "hub-stated sha256 at download",
                   "lock": "your lab's lock"}.get(entry.verify or "", entry.sha256 or "-")
            locked = " (locked)" if entry.name in lock else ""
            print(f"{entry.name:<32} {entry.file:<52} {how}{locked}")
        return 0
    if args.command == "hash":
        for f in args.names:
            print(f"{sha256sum(f)}  {f}")
        return 0
    names = args.names or (names_in_experiment(args.experiment) if args.experiment else [])
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"not registered: {', '.join(unknown)} (python -m transfer.weights list)")
    if args.command == "lock":
        return write_lock(names or [n for n, e in registry.items() if (root / e.file).exists()], registry, root)
    if args.command == "check":
        bad = 0
        for name in names or list(registry):
            state = fetching.status(name, registry[name], root)
            bad += state in ("missing", "checksum MISMATCH")
            hint = f"   -> python -m transfer.weights fetch {name}" if state == "missing" and \
                (registry[name].url or registry[name].hf_repo) else ""
            print(f"{name:<32} {state}{hint}")
        return 1 if bad else 0
    if not names:
        parser.error("fetch needs registered names or --experiment NAME")
    for name in names:
        try:
            path = fetching.fetch(name, registry, root)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {path}")
    return 0


def write_lock(names: list[str], registry: dict[str, WeightsEntry], root: Path) -> int:
    """``<root>/lock.yaml``: name, file, size, sha256 and source (url, or hub repo + the revision served) of each
    file on this machine (checked against the registry's pins first). Fetch, check and every run then refuse a file
    whose bytes differ, so a lab that commits its lock gets the same weights on every machine."""
    import json

    from transfer.weights.fetch import origin_file
    from datamodules.files import atomic_write_text

    missing = [n for n in names if not (root / registry[n].file).exists()]
    if missing:
        print(f"error: not on this machine: {', '.join(missing)}; fetch first: python -m transfer.weights fetch "
              f"{' '.join(missing)}", file=sys.stderr)
        return 1
    if not names:
        print(f"error: no registered weights under {root} to lock", file=sys.stderr)
        return 1
    lock = load_lock(root)
    for name in names:
        entry, path = registry[name], root / registry[name].file
        verify(path, entry, root, use_lock=False)
        origin = json.loads(origin_file(path).read_text()) if origin_file(path).is_file() else {}
        record = {"file": entry.file, "size": path.stat().st_size, "sha256": sha256sum(path)}
        if entry.url:
            record["url"] = entry.url
        if entry.hf_repo:
            record.update(hf_repo=entry.hf_repo, hf_file=entry.hf_file, revision=origin.get("revision") or entry.revision)
        lock[name] = record
        print(f"{name:<32} {record['sha256']}  {record['size']:,} bytes")
    header = ("# Weights as this lab uses them, written by `python -m transfer.weights lock`: fetch, check and every\n"
              "# run refuse a file whose sha256 differs. Commit it beside your experiments.\n")
    atomic_write_text(root / LOCK_FILE, header + yaml.safe_dump(lock, sort_keys=True))
    print(f"-> {root / LOCK_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
