"""Every experiment file composes with the real configs and its parts instantiate (no data, no download)."""

import pytest
from hydra.utils import instantiate

from transfer import experiments
from transfer.preflight import missing_assets
from transfer.weights import WeightsError


@pytest.mark.parametrize("name", experiments.available())
def test_experiment_composes_and_instantiates(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.experiment_name == name and cfg.selection.protocol in {"source_val", "target_val", "fewshot_val", "last", "oracle"}
    instantiate(cfg.trainer)
    for part in (cfg.data, cfg.model):  # data too: CLIP-feature modules hold their encoder
        try:
            instantiate(part, _convert_="all")
        except Exception as e:  # real experiments need local weights: the error must say which file
            required = [m.key for m in missing_assets(cfg) if m.kind == "setting"]  # e.g. model.pretrained=PATH
            assert (isinstance(e.__cause__ or e, WeightsError) or "place the file at" in str(e)
                    or (required and "MissingMandatoryValue" in type(e).__name__ + repr(e.__cause__))), e


def test_rich_progress_bar_and_csv_logger_by_default(make_cfg):
    cfg = make_cfg()
    assert cfg.callbacks.rich_progress_bar._target_.endswith("RichProgressBar")
    assert list(cfg.logger) == ["csv"]
    assert list(make_cfg("logger=many").logger) == ["csv", "tensorboard"]


def test_readme_option_lists_are_the_config_groups():
    from conftest import repo_root
    from transfer.experiments import configuration_markdown, options_markdown

    readme = (repo_root() / "README.md").read_text()
    block = readme.split("<!-- options:begin")[1].split("\n", 1)[1].split("<!-- options:end -->")[0].strip()
    fix = "regenerate: python -m transfer.experiments --markdown > docs/configuration.md (README: options_markdown())"
    assert block == options_markdown(), fix
    assert (repo_root() / "docs" / "configuration.md").read_text() == configuration_markdown(), fix


def test_every_experiment_the_docs_name_exists():
    import re

    from conftest import repo_root

    names = set(experiments.available())
    for doc in [repo_root() / "README.md", *(repo_root() / "docs").glob("*.md")]:
        for name in re.findall(r"experiment=([A-Za-z0-9_]+)", doc.read_text()):
            assert name in names or name in ("NAME",), f"{doc.name}: experiment={name} does not exist"



def test_compositions_share_the_config_store_and_cannot_change_it(make_cfg):
    import copy

    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    assert copy.deepcopy(store) is store  # no per-composition copy of every stored experiment
    assert make_cfg("experiment=source_only_toy", "data.per_class=3").data.per_class == 3
    assert make_cfg("experiment=source_only_toy").data.per_class == 100  # the stored node kept its value
