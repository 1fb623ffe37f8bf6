"""Class labels for images from a classification run (source-only, SFDA, LanDA): each image read as evaluation reads
it (RGB, resized and centre-cropped, normalised like the run's data; for LanDA through the run's CLIP image encoder),
the class names in the run's label order (from its ``data_summary.json``), the probability of the chosen class."""

from __future__ import annotations

import torch
from PIL import Image

from datamodules.domains import build_transforms
from datamodules.errors import DatasetError
from transfer.predict.inputs import Item

PREDICTION_COLUMNS = ["file", "class", "probability"]


class ImagePredictor:
    table, columns, key = "predictions.csv", PREDICTION_COLUMNS, "file"

    def __init__(self, models: list, datamodule, classes: list[str], embed=None, outputs_probabilities: bool = False,
                 device="cpu"):
        """``embed``: images -> the embeddings the models take (LanDA: CLIP); ``outputs_probabilities``: the
        models return class probabilities, not logits. ``device``: where the models (and ``embed``) are."""
        self.models, self.classes, self.embed, self.probabilities = models, classes, embed, outputs_probabilities
        self.device = torch.device(device)
        d = getattr(datamodule, "domains", datamodule)  # an embedding module reads images through its domains
        self.size, self.mean, self.std = int(d.image_size), list(d.mean), list(d.std)
        self.transform = build_transforms(self.size, self.mean, self.std, train=False)

    def settings(self) -> dict:
        return {"task": "classification", "classes": self.classes, "image_size": self.size}

    def kept(self, item: Item, out, earlier: dict) -> dict | None:
        return earlier.get(str(item.path))

    def predict(self, item: Item, out=None) -> dict:
        try:
            with Image.open(item.path) as im:
                x = self.transform(im.convert("RGB")).unsqueeze(0).to(self.device)
        except Exception as e:
            raise DatasetError(f"{item.path}: cannot read the image ({type(e).__name__}: {e})") from e
        if self.embed is not None:
            x = self.embed(x)
        probs = torch.stack([m(x)[0] if self.probabilities else m(x).softmax(-1)[0] for m in self.models]).mean(0)
        if len(probs) != len(self.classes):
            raise DatasetError(f"the run's model has {len(probs)} outputs but its data_summary.json names "
                               f"{len(self.classes)} classes")
        k = int(probs.argmax())
        return {"file": str(item.path), "class": self.classes[k], "probability": f"{float(probs[k]):.6f}"}
