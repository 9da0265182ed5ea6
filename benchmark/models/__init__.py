"""Model zoo: `create_model(name, num_classes, ...)` builds any registered architecture.

Importing the family modules below registers their models.
"""

from benchmark.models import preact_resnet, resnet, small_cnn, wideresnet  # noqa: F401  (registration)
from benchmark.models.base import Classifier, InputNormalize
from benchmark.models.registry import create_model, get_model, list_models, model_metadata, register_model

__all__ = ["Classifier", "InputNormalize", "create_model", "get_model", "list_models", "model_metadata", "register_model"]
