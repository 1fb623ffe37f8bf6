"""Every experiment file composes with the real configs and its parts instantiate (no data, no download)."""

import pytest
from hydra.utils import instantiate

from transfer import experiments
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
            assert isinstance(e.__cause__ or e, WeightsError) or "place the file at" in str(e)


def test_rich_progress_bar_and_csv_logger_by_default(make_cfg):
    cfg = make_cfg()
    assert cfg.callbacks.rich_progress_bar._target_.endswith("RichProgressBar")
    assert list(cfg.logger) == ["csv"]
    assert list(make_cfg("logger=many").logger) == ["csv", "tensorboard"]
