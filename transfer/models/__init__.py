from .backbones import create_classifier

__all__ = ["create_classifier"]
