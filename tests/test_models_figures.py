"""Exact parameter counts the study reports, counted on the meta device (no weights allocated)."""

import pytest
import torch

from fasttrain.models import create_model
from fasttrain.models.counting import count_parameters


def parameters(name: str, num_classes: int = 200, **knobs) -> int:
    with torch.device("meta"):
        model = create_model(name, num_classes, **knobs)
    return count_parameters(model)


@pytest.mark.parametrize(
    "name, knobs, expected",
    [
        ("resnet18", {}, 11_271_432),
        ("resnet34", {}, 21_379_592),
        ("resnet50", {}, 23_910_152),
        ("resnet50", {"skip": False}, 21_133_576),
        ("resnext50_32x4d", {}, 23_382_024),
    ],
)
def test_study_resnet_parameter_counts(name, knobs, expected):
    assert parameters(name, **knobs) == expected


def test_norm_dropout_and_stem_knobs_change_counts_as_designed():
    base = parameters("resnet50")
    # GroupNorm has BatchNorm's affine parameters; Dropout has none.
    assert parameters("resnet50", norm="gn") == base
    assert parameters("resnet50", dropout=0.3) == base
    # The imagenet stem's 7×7 conv vs the cifar 3×3: 64·3·(49−9) more weights.
    assert parameters("resnet50", stem="imagenet") == base + 64 * 3 * 40
    # Without a norm layer, convs carry biases instead of the norm's two vectors.
    assert parameters("resnet18", norm="none") < parameters("resnet18")


def test_vgg19_compact_head_counts():
    # 16 convs with biases (20,024,384) + BN (11,008) + 2048→512→512→200 (1,414,344).
    assert parameters("vgg19") == 21_449_736
    assert parameters("vgg19", norm="none") == 21_438_728
    assert parameters("vgg19", norm="bn", head="imagenet", num_classes=1000) == 143_678_248


def test_t2t_vit_t_14_published_configuration_has_the_published_size():
    count = parameters("t2t_vit_t_14", 1000, img_size=224, t2t_kernels=[7, 3, 3], t2t_strides=[4, 2, 2])
    assert count == 21_465_422
    assert round(count / 1e6, 1) == 21.5


def test_t2t_vit_t_14_at_64_and_the_studys_figure():
    assert parameters("t2t_vit_t_14") == 21_134_142
    # The study's 21.23 M is the published splits, 200 classes, built for 224×224 inputs, with the
    # fixed 197×384 position table stored as a (frozen) parameter.
    published_splits = parameters(
        "t2t_vit_t_14", 200, img_size=224, t2t_kernels=[7, 3, 3], t2t_strides=[4, 2, 2]
    )
    assert round((published_splits + 197 * 384) / 1e6, 2) == 21.23
    # The 64×64 default's first token block reads 3·3·3 = 27 values per token instead of 3·7·7 = 147.
    # That width feeds its LayerNorm (2 per value) and its q/k/v projection (3·64 per value).
    assert published_splits - parameters("t2t_vit_t_14") == (147 - 27) * (2 + 3 * 64)
