"""Model registry: name → builder, the knobs each builder accepts, and one-line errors for wrong names."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

import torch.nn as nn

from fasttrain.errors import UserError, nearest_first
from fasttrain.models.knob_checks import InvalidKnobValueError

ModelBuilder = Callable[..., nn.Module]
BuilderT = TypeVar("BuilderT", bound=ModelBuilder)

_MODELS: dict[str, ModelBuilder] = {}


class UnknownModelError(UserError):
    """A model name that is not registered."""


class UnknownKnobError(UserError):
    """A knob the chosen model does not accept."""


def _knob_defaults(builder: ModelBuilder) -> dict[str, Any]:
    knobs = {}
    for param in inspect.signature(builder).parameters.values():
        if param.name == "num_classes" or param.kind not in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"model builder knob {param.name!r} needs a default value")
        # Tuples become lists, the form a TOML config gives, so defaults compare equal to settings.
        knobs[param.name] = list(param.default) if isinstance(param.default, tuple) else param.default
    return knobs


def register_model(builder: BuilderT | None = None, *, name: str | None = None):
    """Register a model builder under `name` (default: the function's name).

    Use as `@register_model`, `@register_model(name="x")` or `register_model(fn, name="x")`.
    The builder takes `num_classes` and keyword knobs with defaults; those keywords are the
    knobs `create_model` accepts for it.
    """

    def add(fn: BuilderT) -> BuilderT:
        model_name = name or fn.__name__
        if model_name in _MODELS:
            raise ValueError(f"model {model_name!r} is already registered")
        if "num_classes" not in inspect.signature(fn).parameters:
            raise TypeError(f"model builder {model_name!r} must take num_classes")
        _knob_defaults(fn)
        _MODELS[model_name] = fn
        return fn

    return add if builder is None else add(builder)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def _builder(name: str) -> ModelBuilder:
    if name not in _MODELS:
        valid = nearest_first(name, list(_MODELS))
        raise UnknownModelError(
            f"unknown model {name!r}; registered models are: {', '.join(valid)}"
        )
    return _MODELS[name]


def model_knobs(name: str) -> dict[str, Any]:
    """The knobs model `name` accepts, with their defaults (sequences as lists)."""
    return _knob_defaults(_builder(name))


def create_model(name: str, num_classes: int = 200, **knobs: Any) -> nn.Module:
    """Build registered model `name` with `num_classes` outputs; `knobs` override its defaults."""
    accepted = model_knobs(name)
    for knob in knobs:
        if knob not in accepted:
            valid = nearest_first(knob, list(accepted))
            raise UnknownKnobError(
                f"model {name!r} has no knob {knob!r}; its knobs are: {', '.join(valid)}"
            )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        return _MODELS[name](num_classes=num_classes, **knobs)
    except InvalidKnobValueError as err:
        raise InvalidKnobValueError(f"model {name!r}: {err}") from None
