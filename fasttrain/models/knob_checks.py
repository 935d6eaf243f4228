"""Checks of model knob values that raise one-line UserErrors naming the knob and what it accepts."""

from __future__ import annotations

from typing import Any, Sequence

from fasttrain.errors import UserError


class InvalidKnobValueError(UserError):
    """A model knob set to a value the model cannot use."""


def check_choice(knob: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise InvalidKnobValueError(f"knob {knob}={value!r} is not one of {listed}")
    return value


def check_bool(knob: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidKnobValueError(f"knob {knob}={value!r} must be true or false")
    return value


def check_probability(knob: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InvalidKnobValueError(f"knob {knob}={value!r} must be a number in [0, 1)")
    return float(value)


def check_positive_number(knob: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidKnobValueError(f"knob {knob}={value!r} must be a positive number")
    return float(value)


def check_positive_int(knob: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidKnobValueError(f"knob {knob}={value!r} must be a positive integer")
    return value


def check_positive_ints(knob: str, value: Any, length: int) -> tuple[int, ...]:
    """A list/tuple of exactly `length` positive integers, returned as a tuple."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or any(isinstance(item, bool) or not isinstance(item, int) or item < 1 for item in value)
    ):
        raise InvalidKnobValueError(
            f"knob {knob}={value!r} must be a list of {length} positive integers"
        )
    return tuple(value)
