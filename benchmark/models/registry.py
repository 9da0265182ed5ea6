"""Model names -> factories, so configs and the CLI can pick an architecture by name."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

from torch import nn

from benchmark.errors import UsageError
from benchmark.models.base import Classifier, InputNormalize
from benchmark.registry import Registry

ModelFactory = Callable[..., Classifier]

_MODELS: Registry[ModelFactory] = Registry("model")  # model name -> factory
_FACTORIES = _MODELS.entries()  # read-only view, name -> factory


def register_model(name: str, **metadata) -> Callable[[ModelFactory], ModelFactory]:
    """Register `fn(num_classes, in_channels=3, **kw) -> Classifier` under `name`, with optional metadata.

    A second registration of the same name is a programming error and raises, so one
    family can never silently shadow another.
    """
    return _MODELS.register(name, **metadata)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` (fnmatch, e.g. ``"wrn*"``) keeps those it matches."""
    return _MODELS.list(pattern)


def get_model(name: str) -> ModelFactory:
    """The factory registered under ``name``; "unknown model 'x'; known models: …" otherwise."""
    return _MODELS.get(name)


def model_metadata(name: str) -> dict:
    return _MODELS.metadata(name)


def _check_positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")


def _check_channel_stats(values, what: str, in_channels: int) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise UsageError(f"{what} must be a list of {in_channels} numbers, got {values!r}")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a list of {in_channels} numbers, got {values!r}") from None
    if len(numbers) != in_channels:
        raise UsageError(f"{what} has {len(numbers)} values but in_channels is {in_channels}")
    if not all(math.isfinite(v) for v in numbers):
        raise UsageError(f"{what} must be finite, got {values!r}")
    return numbers


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kw,
) -> nn.Module:
    """Build model `name` for [0, 1] inputs.

    With mean/std the model normalizes its own input (first layer), so attacks still
    see [0, 1]; without them it runs on raw [0, 1] pixels, as AT-BSL trains ResNet-18.
    Family-specific options go in `kw`; unknown ones raise UsageError.
    """
    factory = get_model(name)
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(in_channels, "in_channels")
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std for input normalization, or neither")
    if mean is not None:
        mean = _check_channel_stats(mean, "mean", in_channels)
        std = _check_channel_stats(std, "std", in_channels)
        if any(s <= 0 for s in std):
            raise UsageError(f"std must be positive, got {std}")

    try:
        inspect.signature(factory).bind(num_classes, in_channels=in_channels, **kw)
    except TypeError as exc:
        options = [
            param.name
            for param in inspect.signature(factory).parameters.values()
            if param.name not in ("num_classes", "in_channels")
            and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        ]
        raise UsageError(
            f"bad arguments for model {name!r} ({exc}); it accepts: {', '.join(options) or 'no options'}"
        ) from None

    model = factory(num_classes, in_channels=in_channels, **kw)
    if not isinstance(model, Classifier):
        raise TypeError(f"factory for {name!r} returned {type(model).__name__}, not a Classifier")
    if mean is not None:
        model.input_normalize = InputNormalize(mean, std)
    return model
