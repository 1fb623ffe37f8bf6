"""Spoofing scores for audio files from a deepfake-detection run: log P(bona fide) of each clip, read as evaluation
reads it (mono, resampled to the run's rate, the first ``length`` samples or the clip repeated to fill them), and a
decision at the threshold the run chose on its development set (the EER point), when the run recorded one."""

from __future__ import annotations

import torch

from datamodules.audio import crop_or_repeat, load_audio
from datamodules.errors import DatasetError
from transfer.predict.inputs import Item

SCORE_COLUMNS = ["file", "score", "decision"]


class AudioPredictor:
    table, columns, key = "scores.csv", SCORE_COLUMNS, "file"

    def __init__(self, models: list, datamodule, threshold: float | None, device="cpu"):
        self.models, self.threshold, self.device = models, threshold, torch.device(device)
        self.sample_rate, self.length = int(datamodule.sample_rate), int(datamodule.length)

    def settings(self) -> dict:
        return {"task": "deepfake", "threshold": self.threshold, "sample_rate": self.sample_rate, "length": self.length}

    def kept(self, item: Item, out, earlier: dict) -> dict | None:
        return earlier.get(str(item.path))

    def predict(self, item: Item, out=None) -> dict:
        try:
            wav = crop_or_repeat(load_audio(item.path, self.sample_rate), self.length)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"{item.path}: cannot read the audio ({type(e).__name__}: {e})") from e
        x = wav.unsqueeze(0).to(self.device)
        score = float(torch.stack([m(x).log_softmax(-1)[0, 1] for m in self.models]).mean())
        decision = "" if self.threshold is None else ("bonafide" if score > self.threshold else "spoof")
        return {"file": str(item.path), "score": f"{score:.6f}", "decision": decision}
