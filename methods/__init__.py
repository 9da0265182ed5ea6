"""Training methods: ``base`` holds the interface and registry; importing a method file registers it."""
from .base import LossOut, Method, TrainContext, create_method, describe_methods, get_method_class, list_methods, register_method
from . import at, taet  # noqa: F401,E402  (registration)

__all__ = ["LossOut", "Method", "TrainContext", "create_method", "describe_methods", "get_method_class", "list_methods", "register_method"]
