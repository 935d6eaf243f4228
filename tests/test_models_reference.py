"""With the imagenet stem/head, fasttrain's VGG, ResNet and ResNeXt are torchvision's functions exactly."""

import re

import pytest
import torch
import torch.nn as nn
import torchvision.models as tv_models

from fasttrain.models import create_model


def randomise_norm_layers(model: nn.Module) -> None:
    """Non-trivial BatchNorm scale, shift and running statistics, so their placement is tested too."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)


def torchvision_resnet_key(key: str) -> str:
    """torchvision ResNet state-dict key → fasttrain's."""
    key = re.sub(r"^conv1\.", "stem.0.", key)
    key = re.sub(r"^bn1\.", "stem.1.", key)
    key = re.sub(r"^layer(\d)\.", lambda match: f"stages.{int(match.group(1)) - 1}.", key)
    key = re.sub(r"\.bn(\d)\.", r".norm\1.", key)
    return key.replace(".downsample.", ".shortcut.")


CASES = [
    ("vgg19", tv_models.vgg19_bn, {"norm": "bn", "head": "imagenet"}, lambda key: key),
    ("resnet18", tv_models.resnet18, {"stem": "imagenet"}, torchvision_resnet_key),
    ("resnet34", tv_models.resnet34, {"stem": "imagenet"}, torchvision_resnet_key),
    ("resnet50", tv_models.resnet50, {"stem": "imagenet"}, torchvision_resnet_key),
    ("resnext50_32x4d", tv_models.resnext50_32x4d, {"stem": "imagenet"}, torchvision_resnet_key),
]


@pytest.mark.parametrize("name, reference_builder, knobs, map_key", CASES, ids=[case[0] for case in CASES])
def test_same_function_as_torchvision(name, reference_builder, knobs, map_key):
    torch.manual_seed(0)
    reference = reference_builder(weights=None, num_classes=1000)
    randomise_norm_layers(reference)
    with torch.device("meta"):  # skip our own initialisation: every tensor is replaced below
        model = create_model(name, num_classes=1000, **knobs)
    mapped = {map_key(key): value for key, value in reference.state_dict().items()}
    # strict: every tensor has exactly one place, and load_state_dict checks each shape.
    model.load_state_dict(mapped, strict=True, assign=True)

    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval()(images)
        got = model.eval()(images)
    assert got.shape == (2, 1000)
    assert expected.abs().max() > 1e-2  # the comparison is not between two near-zero outputs
    assert (got - expected).abs().max().item() <= 1e-5
