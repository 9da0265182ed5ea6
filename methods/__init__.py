"""Training methods: ``base`` holds the interface and registry; every other module here is one method,
and importing it registers it (all are imported below, so a new method is one new file)."""
import importlib
import pkgutil

from .base import (LossOut, Method, TrainContext, create_method, describe_methods, get_method_class, list_methods,
                   register_method)

_NOT_METHODS = {"base", "losses", "cards", "schedule"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _NOT_METHODS:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["LossOut", "Method", "TrainContext", "create_method", "describe_methods", "get_method_class",
           "list_methods", "register_method"]
