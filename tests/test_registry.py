"""The model registry (timm's face): family/name, create_model, list_models, one state-dict fit report."""

import pytest
import torch

from transfer.models.detectors import create_detector, load_detector_weights
from transfer.models.registry import create_model, list_models, state_dict_fit
from transfer.statedict import StateDictMismatchError


def test_every_family_is_listed_and_built_by_name():
    assert list_models("detector/*") == ["detector/fasterrcnn", "detector/fcos", "detector/retinanet", "detector/tiny_fcos"]
    assert list_models("*/unet") == ["segmentation/unet", "translator/unet"]
    assert "wav2vec2/xlsr_300m" in list_models("wav2vec2/*")
    assert "classifier/resnet18" in list_models("classifier/resnet1*")
    torch.manual_seed(0)
    a = create_model("detector/tiny_fcos", num_classes=3)
    torch.manual_seed(0)
    b = create_detector("tiny_fcos", num_classes=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert create_model("segmentation/mv", spatial_dims=3).__class__.__name__ == "MVNet"
    assert create_model("classifier/resnet18", num_classes=4).fc.out_features == 4


def test_unknown_names_list_what_is_known():
    with pytest.raises(ValueError, match="unknown detector 'fcoss'; known: .*tiny_fcos"):
        create_model("detector/fcoss")
    with pytest.raises(ValueError, match="family one of classifier, detector, segmentation, translator, wav2vec2"):
        create_model("speech/tiny")


def test_one_fit_report_for_every_loader():
    own = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    fit = state_dict_fit(own, {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)})
    assert (fit.missing, fit.unexpected, fit.mis_shaped) == (["c"], ["d"], ["b"]) and not fit.ok
    assert fit.describe() == "1 tensors of another shape, 1 missing, 1 unexpected (e.g. 'b')"
    model = create_model("detector/tiny_fcos", num_classes=3)
    state = model.state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(StateDictMismatchError, match="does not fit FCOS: 0 tensors of another shape, 1 missing"):
        load_detector_weights(model, state, "x.safetensors")
