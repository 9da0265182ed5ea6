"""Model zoo: `create_model(name, num_classes, ...)` builds any registered architecture.

Every module of the package is imported below and importing a family module registers its models,
so a new family is one new file here.
"""
import importlib
import pkgutil

from benchmark.models.base import Classifier, InputNormalize
from benchmark.models.registry import create_model, get_model, list_models, model_metadata, register_model

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):  # preact_resnet, resnet, small_cnn, ...
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Classifier", "InputNormalize", "create_model", "get_model", "list_models", "model_metadata", "register_model"]
