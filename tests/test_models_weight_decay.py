"""Models declare what gets no weight decay (no_weight_decay()); the optimizer's groups follow it."""

import pytest
import torch

from fasttrain.engine.optim import param_groups
from fasttrain.models import create_model

# Reduced variants of each family, with the norm choices that change which parameters exist.
CASES = [
    ("resnet18", {"layers": [1, 1, 1, 1], "width": 0.125}),
    ("resnet18", {"layers": [1, 1, 1, 1], "width": 0.125, "norm": "gn"}),
    ("resnet18", {"layers": [1, 1, 1, 1], "width": 0.125, "norm": "none", "skip": False}),
    ("resnet50", {"layers": [1, 1, 1, 1], "width": 0.125}),
    ("resnext50_32x4d", {"layers": [1, 1, 1, 1], "width": 0.125, "cardinality": 2, "base_width": 16}),
    ("vgg11", {"width": 0.125}),
    ("vgg11", {"width": 0.125, "norm": "none"}),
    ("t2t_vit_t_14", {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "token_dim": 16}),
]


def names_of(model: torch.nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("name, knobs", CASES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_conv_and_linear_weights_decay_norms_biases_and_class_token_do_not(name, knobs):
    with torch.device("meta"):
        model = create_model(name, num_classes=10, **knobs)
    decay, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)
    # The split the optimizer made before models declared it: 1-d parameters, biases, the class token.
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.ndim <= 1 or n.endswith(".bias") or n == "cls_token"}
    assert names_of(model, no_decay) == expected == model.no_weight_decay()
    assert names_of(model, decay) == set(params) - expected
    assert all(params[n].ndim >= 2 for n in names_of(model, decay))  # conv and linear weights only
    if name.startswith("t2t"):
        assert "cls_token" in expected and "pos_embed" not in params  # the position table is a buffer


def test_decay_norm_and_bias_decays_everything():
    with torch.device("meta"):
        model = create_model("t2t_vit_t_14", num_classes=10, img_size=32, embed_dim=32, depth=2, num_heads=2, token_dim=16)
    groups = param_groups(model, 0.05, decay_norm_and_bias=True)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.05
    assert names_of(model, groups[0]) == set(dict(model.named_parameters()))
