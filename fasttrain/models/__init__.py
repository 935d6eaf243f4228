"""Model families of the study behind one registry: create_model(name, num_classes, **knobs)."""

from fasttrain.models.knob_checks import InvalidKnobValueError
from fasttrain.models.registry import (
    UnknownKnobError,
    UnknownModelError,
    create_model,
    list_models,
    model_knobs,
    register_model,
)

# Importing the family modules registers their models.
from fasttrain.models import resnet, t2t_vit, vgg  # noqa: E402,F401  isort:skip

__all__ = [
    "InvalidKnobValueError",
    "UnknownKnobError",
    "UnknownModelError",
    "create_model",
    "list_models",
    "model_knobs",
    "register_model",
]
