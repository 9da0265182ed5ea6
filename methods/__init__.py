"""Training methods: ``base`` holds the interface and registry, ``losses`` the pieces several methods share;
every other module here is one method, and importing it registers it. Every module of the package is
imported below (importing one that registers nothing is harmless), so a new method is one new file."""
import importlib
import pkgutil

from .base import (LossOut, Method, TrainContext, create_method, describe_methods, get_method, get_method_class,
                   list_methods, method_metadata, register_method)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["LossOut", "Method", "TrainContext", "create_method", "describe_methods", "get_method",
           "get_method_class", "list_methods", "method_metadata", "register_method"]
