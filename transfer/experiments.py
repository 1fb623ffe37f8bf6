"""Expose the top-level ``experiments/*.yaml`` files as Hydra's config group ``experiment``.

Hydra names a group after its directory, so a folder ``experiments/`` outside the package cannot be a
group called ``experiment`` through the search path. Each file is instead stored in the ConfigStore
(package ``_global_``), which keeps its ``defaults: [override /group: option]`` lines working. The
folder is looked up in this order: ``$TRANSFER_EXPERIMENTS_DIR``, the source checkout that holds this
package, then the copy that ``pip install .`` places under ``<prefix>/share/transfer/experiments``.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

ENV_VAR = "TRANSFER_EXPERIMENTS_DIR"
# old name -> new name; the old names keep working until release 0.3 (CHANGELOG.md), with a note when used
RENAMED = {**{f"landa_officehome_{d}": f"landa_office_home_{d}" for d in ("Art", "Clipart", "Product", "Real_World")},
           "source_only_officehome": "source_only_office_home"}


def candidate_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    dirs.append(Path(__file__).resolve().parent.parent / "experiments")
    dirs.append(Path(sys.prefix) / "share" / "transfer" / "experiments")
    return dirs


def experiments_dir() -> Path:
    for d in candidate_dirs():
        if d.is_dir() and any(d.glob("*.yaml")):
            return d
    raise FileNotFoundError(
        "no experiments folder found; looked in " + ", ".join(str(d) for d in candidate_dirs())
        + f". Set {ENV_VAR} to the folder that holds the experiment YAML files."
    )


def available() -> list[str]:
    folder = experiments_dir()
    return sorted([p.stem for p in folder.glob("*.yaml")] + list(sfda_pairs(folder)))


#: few-shot SFDA pairs by dataset: None = every ordered pair of its domains (datamodules.DESCRIPTORS), else the list
SFDA_PAIRS: dict[str, list[tuple[str, str]] | None] = {
    "office31": None, "office_home": None, "office_home_rsut": None, "vlcs": None, "terra_incognita": None,
    "visda2017": [("Synthetic", "Real")], "visda2017_rsut": [("Synthetic", "Real")],
}


def sfda_pairs(folder: Path) -> dict:
    """The named few-shot SFDA experiments, composed from one file per dataset and stage (``sfda_<dataset>.yaml``,
    ``sfda_source_<dataset>.yaml``): ``sfda_source_<dataset>_<source>`` and ``sfda_<dataset>_<source>_<target>``.
    A change to the protocol is one edit of the dataset's file."""
    from datamodules.catalogue import DESCRIPTORS

    out = {}
    for dataset, pairs in SFDA_PAIRS.items():
        stage1, stage2 = folder / f"sfda_source_{dataset}.yaml", folder / f"sfda_{dataset}.yaml"
        if not (stage1.is_file() and stage2.is_file()):
            continue
        domains = [d.name for d in DESCRIPTORS[dataset].domains]
        pairs = pairs or [(s, t) for s in domains for t in domains if s != t]
        for source in sorted({s for s, _ in pairs}, key=domains.index):
            out[f"sfda_source_{dataset}_{source}"] = OmegaConf.merge(OmegaConf.load(stage1), {"data": {"sources": [source]}})
        for source, target in pairs:
            out[f"sfda_{dataset}_{source}_{target}"] = OmegaConf.merge(OmegaConf.load(stage2),
                                                                      {"data": {"source": source, "target": target}})
    return out


def register() -> Path:
    """Store every experiment file under group ``experiment``; returns the folder used. Also registers the
    resolvers ``label_space`` (null -> ``all``, K -> ``known<K>``; names exported SFDA source models) and
    ``run_suffix`` (random, once per run: unique run folders)."""
    OmegaConf.register_new_resolver("label_space", lambda n: f"known{n}" if n else "all", replace=True)
    # run folders: a timestamp to the second + 6 random hex digits, so runs started together never share one
    if not OmegaConf.has_resolver("run_suffix"):
        OmegaConf.register_new_resolver("run_suffix", lambda: secrets.token_hex(3), use_cache=True)
    from transfer.schemas import register as register_schemas

    register_schemas()
    share_config_store()
    folder = experiments_dir()
    store = ConfigStore.instance()
    for path in sorted(folder.glob("*.yaml")):
        node = OmegaConf.load(path)
        node.experiment_name = path.stem
        store.store(group="experiment", name=path.stem, node=node, package="_global_")
    for name, node in sfda_pairs(folder).items():
        node.experiment_name = name
        store.store(group="experiment", name=name, node=node, package="_global_")
    for old, new in RENAMED.items():
        if (folder / f"{new}.yaml").is_file():
            node = OmegaConf.load(folder / f"{new}.yaml")
            node.experiment_name = new
            store.store(group="experiment", name=old, node=node, package="_global_")
    return folder


def share_config_store() -> None:
    """Let copies of Hydra's config repository share the one ConfigStore instead of deep-copying it.

    Hydra 1.3 deep-copies its repository, ConfigStore included, at every composition; with every experiment stored
    there that copy was a third of a composition's time (about 0.2 s of each). Hydra 1.4 looks the singleton up
    instead of copying it (facebookresearch/hydra#2928); this gives 1.3 the same behaviour. Safe because the store
    hands out a deep copy of each node it loads, so no composition can change a stored node."""
    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self


def compose(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The config ``python -m transfer.<config_name>`` would run with these overrides, without Hydra's run
    machinery (no run folder, no logging set-up); experiments are registered first."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="transfer.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def renamed_note(overrides: list[str]) -> str | None:
    """The deprecation note for an ``experiment=OLD`` among ``overrides``, if any."""
    for o in overrides:
        old = o.partition("=")[2] if o.startswith("experiment=") else None
        if old in RENAMED:
            return (f"note: experiment={old} was renamed experiment={RENAMED[old]} (one name per dataset: office_home); "
                    f"the old name works until release 0.3")
    return None


# what each config group is for, shown with its options in README.md and docs/configuration.md
GROUP_ROLES = {
    "data": "dataset and reader (real formats and synthetic toys)",
    "model": "method and its model",
    "selection": "which checkpoint is scored (none reads target test labels but `oracle`)",
    "trainer": "where and how it trains",
    "callbacks": "checkpointing and progress bar",
    "logger": "metric logs",
    "detector": "ModTr's frozen detector (`model.detector`)",
    "translator": "ModTr's IR-to-RGB translator (`model.translator`)",
    "landa": "LanDA's baselines and ablations beside it",
    "sfda": "few-shot SFDA's comparison as in the paper",
    "paths": "data, output, cache folders (environment overrides)",
}


def config_groups() -> dict[str, list[str]]:
    """Every config group of ``transfer/conf`` with its options (file stems), ``hydra`` left out."""
    from importlib import resources

    conf = resources.files("transfer.conf")
    groups = {d.name: sorted(f.name[:-5] for f in d.iterdir() if f.name.endswith(".yaml"))
              for d in conf.iterdir() if d.is_dir() and d.name not in ("hydra", "__pycache__")}
    unknown = sorted(set(groups) - set(GROUP_ROLES))
    if unknown:
        raise KeyError(f"config group(s) {unknown} have no entry in transfer.experiments.GROUP_ROLES")
    return {g: groups[g] for g in GROUP_ROLES if g in groups}


def families() -> dict[str, list[str]]:
    """Experiments by family (the name up to the dataset): toys first."""
    out: dict[str, list[str]] = {"toys": [n for n in available() if n.endswith("_toy")]}
    for name in available():
        if not name.endswith("_toy"):
            family = "source_only" if name.startswith("source_only") else name.split("_")[0] + (
                "_source" if name.startswith("sfda_source") else "")
            out.setdefault(family, []).append(name)
    return out


def options_markdown() -> str:
    """The option lists README.md shows (between its ``options`` markers): generated, so never stale."""
    lines = [f"- `{g}=` " + " ".join(f"`{o}`" for o in opts) + f" — {GROUP_ROLES[g]}"
             for g, opts in config_groups().items()]
    fams = families()
    lines.append(f"- `experiment=` toys: {', '.join(f'`{n}`' for n in fams.pop('toys'))}; "
                 + "; ".join(f"{k} ({len(v)})" for k, v in fams.items())
                 + " — all listed in docs/configuration.md or by `python -m transfer.experiments`")
    lines.append("- `hydra/launcher=` `submitit_local` `submitit_slurm` — one job per fold or sweep point "
                 "(`pip install \".[cluster]\"`)")
    return "\n".join(lines)


def configuration_markdown() -> str:
    """docs/configuration.md: every group, option and experiment."""
    out = ["# Configuration", "", "Generated by `python -m transfer.experiments --markdown` (a test checks it against "
           "`transfer/conf/` and `experiments/`).", "", "## Config groups", "", options_markdown(), "",
           "## Experiments", ""]
    for family, names in families().items():
        out.append(f"- **{family}** ({len(names)}): " + ", ".join(f"`{n}`" for n in names))
    renamed = ", ".join(f"`{old}` → `{new}`" for old, new in RENAMED.items())
    out += ["", f"Renamed (the old names still run, with a note, until release 0.3): {renamed}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        print(configuration_markdown(), end="")
        return 0
    if args:
        print("usage: python -m transfer.experiments [--markdown]", file=sys.stderr)
        return 2
    for family, names in families().items():
        print(f"{family} ({len(names)}): {' '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
