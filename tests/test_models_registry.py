"""Registry contract: names, knobs, one-line errors for wrong names/knobs/values, test-time registration."""

import pytest
import torch
import torch.nn as nn

from fasttrain.errors import UserError
from fasttrain.models import (
    InvalidKnobValueError,
    UnknownKnobError,
    UnknownModelError,
    create_model,
    list_models,
    model_knobs,
    register_model,
)
from fasttrain.models import registry
from fasttrain.models.__main__ import main as table_main

STUDY_MODELS = {
    "vgg11", "vgg13", "vgg16", "vgg19",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d",
    "t2t_vit_t_14", "t2t_vit_t_19", "t2t_vit_t_24",
}


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test vanish afterwards."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


def test_every_family_member_is_registered():
    assert set(list_models()) == STUDY_MODELS
    assert list_models() == sorted(list_models())


def test_knob_names_match_the_config_contract():
    conv_resnet = {"skip", "norm", "dropout", "stem", "layers", "width", "zero_init_residual"}
    assert set(model_knobs("resnet50")) == conv_resnet
    assert set(model_knobs("resnext50_32x4d")) == conv_resnet | {"cardinality", "base_width"}
    assert set(model_knobs("vgg19")) == {"norm", "dropout", "width", "head"}
    assert {"drop_path", "dropout", "attn_dropout", "img_size", "t2t_kernels", "t2t_strides",
            "embed_dim", "depth", "num_heads"} <= set(model_knobs("t2t_vit_t_14"))
    assert model_knobs("resnet50")["layers"] == [3, 4, 6, 3]
    assert model_knobs("resnext50_32x4d")["cardinality"] == 32
    assert model_knobs("resnet18")["stem"] == "cifar"
    assert model_knobs("t2t_vit_t_14")["img_size"] == 64
    assert model_knobs("t2t_vit_t_14")["t2t_kernels"] == [3, 3, 3]


def test_unknown_model_lists_valid_names_nearest_first():
    with pytest.raises(UnknownModelError) as caught:
        create_model("resnet5O")
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    listed = message.split(": ", 1)[1].split(", ")
    assert listed[0] == "resnet50" and set(listed) == STUDY_MODELS
    with pytest.raises(UnknownModelError):
        model_knobs("vgg20_typo")


def test_unknown_knob_lists_valid_knobs_nearest_first():
    with pytest.raises(UnknownKnobError) as caught:
        create_model("resnet18", drop_out=0.1)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert "'drop_out'" in message and "'resnet18'" in message
    listed = message.split("its knobs are: ", 1)[1].split(", ")
    assert listed[0] == "dropout" and set(listed) == set(model_knobs("resnet18"))
    with pytest.raises(UnknownKnobError):
        create_model("resnet50", cardinality=32)  # ResNeXt-only knob


@pytest.mark.parametrize(
    "name, knobs, mentions",
    [
        ("resnet18", {"norm": "ln"}, "norm='ln'"),
        ("resnet18", {"layers": [2, 2, 2]}, "layers"),
        ("resnet18", {"stem": "big"}, "stem"),
        ("resnet18", {"skip": "no"}, "skip"),
        ("vgg11", {"norm": "gn"}, "norm='gn'"),
        ("vgg11", {"dropout": 1.5}, "dropout"),
        ("t2t_vit_t_14", {"embed_dim": 100}, "num_heads"),
        ("t2t_vit_t_14", {"t2t_strides": [2, 2]}, "t2t_strides"),
    ],
)
def test_invalid_knob_values_are_one_line_user_errors(name, knobs, mentions):
    with torch.device("meta"), pytest.raises(InvalidKnobValueError) as caught:
        create_model(name, **knobs)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert message.startswith(f"model {name!r}: ") and mentions in message


def test_bad_num_classes_is_a_user_error():
    with pytest.raises(UserError, match="num_classes"):
        create_model("resnet18", num_classes=0)


def test_tiny_variant_registers_through_the_decorator(scratch_registry):
    @register_model
    def tiny_linear(num_classes: int = 200, *, hidden: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.Linear(hidden, num_classes))

    assert "tiny_linear" in list_models()
    assert model_knobs("tiny_linear") == {"hidden": 4}
    model = create_model("tiny_linear", num_classes=7, hidden=3)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 7)
    with pytest.raises(ValueError, match="already registered"):
        register_model(tiny_linear)
    register_model(name="tiny_alias")(tiny_linear)
    assert "tiny_alias" in list_models()


def test_builders_without_num_classes_or_knob_defaults_are_rejected(scratch_registry):
    with pytest.raises(TypeError, match="num_classes"):
        register_model(lambda depth=1: nn.Identity(), name="no_classes")
    with pytest.raises(TypeError, match="default"):
        register_model(lambda num_classes=200, *, depth: nn.Identity(), name="no_default")


def test_cli_table_lists_parameters_and_gflops(capsys, scratch_registry):
    # A small registry keeps the run quick; the real table is the same code over all models.
    for name in set(list_models()) - {"resnet18", "t2t_vit_t_14"}:
        del registry._MODELS[name]
    assert table_main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert rows["resnet18"][0] == "11,271,432"
    assert rows["t2t_vit_t_14"][0] == "21,134,142"
    # ImageNet ResNet-18 is 3.64 GFLOPs at 224×224 with 56×56 first-stage maps; the cifar stem
    # keeps 64×64 maps, (64/56)² ≈ 1.3× the stage work with a cheaper stem: ≈ 4.4 GFLOPs.
    assert 4.3 < float(rows["resnet18"][1]) < 4.6
    assert 2.5 < float(rows["t2t_vit_t_14"][1]) < 4.0
