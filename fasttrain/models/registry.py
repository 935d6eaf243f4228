"""Model registry: name → builder, whose annotated keyword signature is the knob schema; one-line errors for wrong names and values.

A knob is one keyword parameter of a builder: its annotation is the type (`Literal[...]` for choices,
`Annotated[float, Range(0, 1)]` for bounds) and its default the model's default. Config files, `--set`
overrides and `create_model` are all checked against it with fasttrain.schema's coercion. No torch
here: configs are checked without importing it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from fasttrain.errors import did_you_mean, nearest_first
from fasttrain.schema import ConfigError, coerce

ModelBuilder = Callable[..., Any]
BuilderT = TypeVar("BuilderT", bound=ModelBuilder)

_MODELS: dict[str, ModelBuilder] = {}


class UnknownModelError(ConfigError):
    """A model name that is not registered."""


class UnknownKnobError(ConfigError):
    """A knob the chosen model does not accept."""


class InvalidKnobValueError(ConfigError):
    """A model knob set to a value (or a combination of values) the model cannot use."""


def _knob_parameters(builder: ModelBuilder) -> dict[str, inspect.Parameter]:
    """The builder's knobs: every keyword parameter but num_classes, each with a default and an annotation."""
    knobs = {}
    for param in inspect.signature(builder, eval_str=True).parameters.values():
        if param.name == "num_classes" or param.kind not in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"model builder knob {param.name!r} needs a default value")
        if param.annotation is inspect.Parameter.empty:
            raise TypeError(f"model builder knob {param.name!r} needs a type annotation (it is the knob's schema)")
        knobs[param.name] = param
    return knobs


def register_model(builder: BuilderT | None = None, *, name: str | None = None):
    """Register a model builder under `name` (default: the function's name).

    Use as `@register_model`, `@register_model(name="x")` or `register_model(fn, name="x")`.
    The builder takes `num_classes` and annotated keyword knobs with defaults; those keywords are
    the knobs `create_model` and a config's [model] table accept for it.
    """

    def add(fn: BuilderT) -> BuilderT:
        model_name = name or fn.__name__
        if model_name in _MODELS:
            raise ValueError(f"model {model_name!r} is already registered")
        if "num_classes" not in inspect.signature(fn).parameters:
            raise TypeError(f"model builder {model_name!r} must take num_classes")
        _knob_parameters(fn)
        _MODELS[model_name] = fn
        return fn

    return add if builder is None else add(builder)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def _builder(name: str, where: str = "") -> ModelBuilder:
    if name not in _MODELS:
        valid = nearest_first(name, list(_MODELS))
        at = f"{where} name: " if where else ""
        raise UnknownModelError(f"{at}unknown model {name!r}; registered models are: {', '.join(valid)}")
    return _MODELS[name]


def model_knobs(name: str) -> dict[str, Any]:
    """The knobs model `name` accepts, with their defaults (sequences as lists, the form a TOML config gives)."""
    return {
        knob: list(param.default) if isinstance(param.default, tuple) else param.default
        for knob, param in _knob_parameters(_builder(name)).items()
    }


def check_knobs(name: str, knobs: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """`knobs` checked against model `name`'s builder signature and coerced to its types.

    `where` (e.g. "configs/x.toml: [model]") starts every message; errors name the nearest valid model or knob.
    """
    accepted = _knob_parameters(_builder(name, where))
    at = f"{where} " if where else ""
    checked = {}
    for knob, value in knobs.items():
        if knob not in accepted:
            valid = nearest_first(knob, list(accepted))
            raise UnknownKnobError(f"{at}model {name!r} has no knob {knob!r}; "
                                   f"{did_you_mean(knob, valid)}its knobs are: {', '.join(valid)}")
        # A single value is shown as set; a list's message names the item that is wrong.
        shown = "" if isinstance(value, (list, tuple)) else f"={value!r}"
        try:
            checked[knob] = coerce(value, accepted[knob].annotation, f"{at}model {name!r}: knob {knob}{shown}")
        except ConfigError as err:
            raise InvalidKnobValueError(str(err)) from None
    return checked


def create_model(name: str, num_classes: int = 200, **knobs: Any):
    """Build registered model `name` (an nn.Module) with `num_classes` outputs; `knobs` override its defaults."""
    checked = check_knobs(name, knobs)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        return _MODELS[name](num_classes=num_classes, **checked)
    except InvalidKnobValueError as err:  # a combination of knobs the network cannot be built with
        raise InvalidKnobValueError(f"model {name!r}: {err}") from None
