"""wav2vec2 backbones from torchaudio's builders, with a pooled 2-way head for spoofing countermeasures.

Names: ``tiny`` (toys/tests, ~0.2 M parameters), ``base``, ``xlsr_300m``, ``xlsr_1b`` (the XLS-R shapes).
Real weights come from a local file resolved through ``weights/``: a torchaudio-layout state dict (what
``torchaudio.pipelines`` models save) or a Hugging Face ``Wav2Vec2Model`` / ``Wav2Vec2ForCTC`` state dict
(``model.safetensors``), renamed the way torchaudio's ``import_huggingface_model`` maps the modules, or a
fairseq checkpoint (``xlsr2_300m.pt``: its ``model`` tensors, keys mapped by torchaudio's fairseq importer).
fairseq checkpoints load as released (``args`` Namespace or omegaconf ``cfg``, numpy training state) through the
suite's safe loader (:func:`transfer.safeload.load_checkpoint_file`): no code from the file runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torchaudio.models import wav2vec2_model

from transfer.models.registry import names_from, register_family
from transfer.statedict import require_fit
from transfer.weights import random_init_requested, resolve
from transfer.safeload import load_checkpoint_file, load_state_dict, state_dict_of

_LARGE_EXTRACTOR = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
CONFIGS = {
    "tiny": dict(extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 2, 2)],
                 extractor_conv_bias=False, encoder_embed_dim=64, encoder_projection_dropout=0.0,
                 encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=4, encoder_num_heads=4,
                 encoder_attention_dropout=0.0, encoder_ff_interm_features=128, encoder_ff_interm_dropout=0.0,
                 encoder_dropout=0.0, encoder_layer_norm_first=True, encoder_layer_drop=0.0),
    "base": dict(extractor_mode="group_norm", extractor_conv_layer_config=_LARGE_EXTRACTOR, extractor_conv_bias=False,
                 encoder_embed_dim=768, encoder_projection_dropout=0.1, encoder_pos_conv_kernel=128,
                 encoder_pos_conv_groups=16, encoder_num_layers=12, encoder_num_heads=12, encoder_attention_dropout=0.1,
                 encoder_ff_interm_features=3072, encoder_ff_interm_dropout=0.0, encoder_dropout=0.1,
                 encoder_layer_norm_first=False, encoder_layer_drop=0.05),
    "xlsr_300m": dict(extractor_mode="layer_norm", extractor_conv_layer_config=_LARGE_EXTRACTOR, extractor_conv_bias=True,
                      encoder_embed_dim=1024, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=128,
                      encoder_pos_conv_groups=16, encoder_num_layers=24, encoder_num_heads=16,
                      encoder_attention_dropout=0.0, encoder_ff_interm_features=4096, encoder_ff_interm_dropout=0.0,
                      encoder_dropout=0.0, encoder_layer_norm_first=True, encoder_layer_drop=0.0),
    "xlsr_1b": dict(extractor_mode="layer_norm", extractor_conv_layer_config=_LARGE_EXTRACTOR, extractor_conv_bias=True,
                    encoder_embed_dim=1280, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=128,
                    encoder_pos_conv_groups=16, encoder_num_layers=48, encoder_num_heads=16,
                    encoder_attention_dropout=0.0, encoder_ff_interm_features=5120, encoder_ff_interm_dropout=0.0,
                    encoder_dropout=0.0, encoder_layer_norm_first=True, encoder_layer_drop=0.0),
}


_HF_DROP = ("masked_spec_embed", "quantizer.", "project_q.", "project_hid.", "lm_head.", "dropout_features")


def from_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face wav2vec2 keys -> torchaudio keys (feature_projection -> encoder.feature_projection,
    encoder -> encoder.transformer)."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("wav2vec2.")
        if k.startswith(_HF_DROP):
            continue
        if k.startswith("feature_projection."):
            k = "encoder." + k
        elif k.startswith("encoder."):
            k = "encoder.transformer." + k.removeprefix("encoder.")
        out[k] = v
    return out


_WN = (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"))


def _weight_norm_names(state: dict, own: dict) -> dict:
    """The positional convolution's weight norm is saved as weight_g/weight_v (old torch.nn.utils.weight_norm)
    or as parametrizations (new); rename to whichever this torch builds."""
    new_style = any("parametrizations.weight.original0" in k for k in own)
    out = {}
    for k, v in state.items():
        for old, new in _WN:
            k = k.replace(old, new) if new_style and k.endswith(old) else (k.replace(new, old) if not new_style else k)
        out[k] = v
    return out


def load_weights_file(path) -> dict[str, torch.Tensor]:
    """The wav2vec2 tensors of a file: safetensors, a plain state dict, or a checkpoint as fairseq writes it (the
    tensors under ``model`` next to ``args`` or ``cfg``, or s3prl's copy of it with them under ``model_weight``, in
    fairseq's names, mapped to torchaudio's)."""
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    if str(path).endswith(".safetensors"):
        return load_state_dict(path)
    ckpt = load_checkpoint_file(path, "wav2vec2 weights")
    fairseq_key = next((k for k, cfg in (("model", ("args", "cfg")), ("model_weight", ("model_cfg",)))
                        if isinstance(ckpt, dict) and k in ckpt and any(c in ckpt for c in cfg)), None)
    if fairseq_key:
        state = state_dict_of(ckpt[fairseq_key], path)
        return _convert_state_dict({k.removeprefix("w2v_encoder.w2v_model."): v for k, v in state.items()})
    return state_dict_of(ckpt, path)


@register_family("wav2vec2", names_from(CONFIGS))
def create_wav2vec2(name: str = "tiny", weights: str | None = None) -> nn.Module:
    """``weights``: a registered name or file; ``random`` for a random init on purpose. Every size but ``tiny``
    (the toys' backbone) is a pretrained model and refuses to start without weights."""
    if name not in CONFIGS:
        raise ValueError(f"unknown wav2vec2 '{name}'; known: {', '.join(CONFIGS)}")
    model = wav2vec2_model(**CONFIGS[name], aux_num_out=None)
    if random_init_requested("wav2vec2 backbone", name, weights, pretrained_only=name != "tiny"):
        model.random_init = True
    elif weights:
        path = resolve(weights)
        state = load_weights_file(path)
        if any(k.startswith(("wav2vec2.", "feature_projection.")) or ".parametrizations." in k for k in state):
            state = from_huggingface(state)
        own = model.state_dict()
        state = _weight_norm_names(state, own)
        require_fit(own, state, str(path), f"torchaudio wav2vec2 '{name}'")
        model.load_state_dict(state)
    return model



class MeanMaxPool(nn.Module):
    """[B, T, D] -> [B, 2D]: mean and max over time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(1), x.amax(1)], -1)


BACKENDS = ("mlp", "aasist")


class SpoofClassifier(nn.Module):
    """wav2vec2 frames -> back-end -> logits (class 1 = bona fide). ``backend``: ``mlp`` (mean + max pooling over
    time, MLP) or ``aasist`` (the spectro-temporal graph attention back-end of SSL-AASIST, ``models/aasist.py``)."""

    def __init__(self, backbone: str = "tiny", weights: str | None = None, hidden: int = 64, backend: str = "mlp",
                 backend_kwargs: dict | None = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
        self.backbone = create_wav2vec2(backbone, weights)
        d = CONFIGS[backbone]["encoder_embed_dim"]
        if backend == "mlp":
            self.head = nn.Sequential(MeanMaxPool(), nn.Linear(2 * d, hidden), nn.GELU(), nn.Linear(hidden, 2))
        else:
            from transfer.models.aasist import AASISTBackend

            self.head = AASISTBackend(d, **(backend_kwargs or {}))

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """The backbone's frames [B, T, D]."""
        return self.backbone(wav)[0]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(wav))
