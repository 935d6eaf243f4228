"""Model families of the study behind one registry: create_model(name, num_classes, **knobs).

Importing this package registers every model (fasttrain.models.builders) without importing torch;
a network module is imported when its model is first built.
"""

from fasttrain.models.registry import (
    InvalidKnobValueError,
    UnknownKnobError,
    UnknownModelError,
    check_knobs,
    create_model,
    list_models,
    model_knobs,
    register_model,
)

from fasttrain.models import builders  # noqa: E402,F401  isort:skip  (registers the models)

__all__ = [
    "InvalidKnobValueError",
    "UnknownKnobError",
    "UnknownModelError",
    "check_knobs",
    "create_model",
    "list_models",
    "model_knobs",
    "register_model",
]
