"""The study's reported test top-1 per model (docs/STUDY.md), and which runs they may be set beside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

# Knobs that regularise or initialise a model without changing its architecture: a run that
# sets them is still the study's model, trained with another recipe.
RECIPE_KNOBS = frozenset({"dropout", "drop_path", "attn_dropout", "zero_init_residual"})


@dataclass(frozen=True)
class StudyResult:
    label: str
    model: str
    knobs: dict[str, Any]
    """The knob values that identify the study's variant (checked against the run's resolved knobs)."""
    top1: float
    params_m: Optional[float]


STUDY_RESULTS: tuple[StudyResult, ...] = (
    StudyResult("VGG19 (BN)", "vgg19", {"norm": "bn"}, 0.5279, None),
    StudyResult("VGG19 without BN", "vgg19", {"norm": "none"}, 0.0050, None),
    StudyResult("ResNet18", "resnet18", {"norm": "bn", "skip": True}, 0.5509, 11.27),
    StudyResult("ResNet34", "resnet34", {"norm": "bn", "skip": True}, 0.5603, 21.38),
    StudyResult("ResNet50", "resnet50", {"norm": "bn", "skip": True}, 0.5897, 23.91),
    StudyResult("ResNet50 without skip", "resnet50", {"norm": "bn", "skip": False}, 0.5403, 21.133),
    StudyResult("ResNeXt50", "resnext50_32x4d", {"norm": "bn", "skip": True}, 0.5929, 23.38),
    StudyResult("T2T-ViT-t-14", "t2t_vit_t_14", {}, 0.4163, 21.23),
)


def resolved_knobs(model: str, set_knobs: dict[str, Any]) -> dict[str, Any] | None:
    """The model's default knobs with the run's settings applied; None for a model not registered here."""
    from fasttrain.models import list_models, model_knobs

    if model not in list_models():
        return None
    knobs = model_knobs(model)
    knobs.update({k: list(v) if isinstance(v, tuple) else v for k, v in set_knobs.items()})
    return knobs


def study_result(model: str, set_knobs: dict[str, Any]) -> StudyResult | None:
    """The study's result for this model variant, if the study reports one."""
    knobs = resolved_knobs(model, set_knobs)
    if knobs is None:
        return None
    for entry in STUDY_RESULTS:
        if entry.model == model and all(knobs.get(k) == v for k, v in entry.knobs.items()):
            return entry
    return None


def differences_from_study(model: str, set_knobs: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """Why a run is not the study's setup (other data, image size or architecture); empty when it is."""
    reasons = []
    if data.get("source") != "tiny-imagenet":
        reasons.append(f"{data.get('source', 'unknown')} data")
    if data.get("image_size") not in (None, 64):
        reasons.append(f"{data['image_size']}px images")
    defaults = resolved_knobs(model, {}) or {}
    for knob, value in sorted(set_knobs.items()):
        if knob in RECIPE_KNOBS:
            continue
        value = list(value) if isinstance(value, tuple) else value
        if knob in defaults and defaults[knob] != value:
            entry = study_result(model, set_knobs)
            if entry is not None and knob in entry.knobs:
                continue  # the knob that selects this study variant (e.g. skip=false)
            reasons.append(f"{knob}={value}")
    return reasons
