"""transfer: domain adaptation and transfer learning on PyTorch + Lightning + Hydra."""

__version__ = "0.1.0"
