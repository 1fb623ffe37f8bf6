from .module import SourceOnlyClassifier

__all__ = ["SourceOnlyClassifier"]
