"""The registered models: one annotated builder per family, whose signature is the knob schema.

Adding a knob is one parameter here (type, range and default in the annotation) plus its use in
the network. The network modules (torch) are imported only when a model is built, so a config's
[model] table is checked against these signatures without importing torch.
"""

from typing import Annotated, Literal

from fasttrain.models.registry import register_model
from fasttrain.schema import Range

Probability = Annotated[float, Range(0.0, 1.0, max_open=True)]
PositiveNumber = Annotated[float, Range(0.0, min_open=True)]
PositiveInt = Annotated[int, Range(1)]
ConvNorm = Literal["bn", "gn", "none"]
FourStages = tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt]
ThreeSplits = tuple[PositiveInt, PositiveInt, PositiveInt]

RESNETS = {  # name: (block, stages)
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
RESNEXTS = {  # name: (stages, cardinality, base width)
    "resnext50_32x4d": ((3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ((3, 4, 23, 3), 32, 8),
}
T2T_VITS = {  # name: (embed_dim, depth, num_heads)
    "t2t_vit_t_14": (384, 14, 6),
    "t2t_vit_t_19": (448, 19, 7),
    "t2t_vit_t_24": (512, 24, 8),
}
VGGS = ("vgg11", "vgg13", "vgg16", "vgg19")


def _register_resnet(name: str, block: str, stages: tuple[int, int, int, int]) -> None:
    def build(
        num_classes: int = 200,
        *,
        layers: FourStages = stages,
        skip: bool = True,
        norm: ConvNorm = "bn",
        dropout: Probability = 0.0,
        stem: Literal["cifar", "imagenet"] = "cifar",
        width: PositiveNumber = 1.0,
        zero_init_residual: bool = False,
    ):
        from fasttrain.models.resnet import ResNet

        return ResNet(block, num_classes, layers=layers, skip=skip, norm=norm, dropout=dropout, stem=stem,
                      width=width, zero_init_residual=zero_init_residual)

    build.__doc__ = f"{name}: {block} blocks, stages {stages}."
    register_model(build, name=name)


def _register_resnext(name: str, stages: tuple[int, int, int, int], groups: int, group_width: int) -> None:
    def build(
        num_classes: int = 200,
        *,
        layers: FourStages = stages,
        cardinality: PositiveInt = groups,
        base_width: PositiveInt = group_width,
        skip: bool = True,
        norm: ConvNorm = "bn",
        dropout: Probability = 0.0,
        stem: Literal["cifar", "imagenet"] = "cifar",
        width: PositiveNumber = 1.0,
        zero_init_residual: bool = False,
    ):
        from fasttrain.models.resnet import ResNet

        return ResNet("bottleneck", num_classes, layers=layers, skip=skip, norm=norm, dropout=dropout, stem=stem,
                      width=width, zero_init_residual=zero_init_residual, cardinality=cardinality,
                      base_width=base_width)

    build.__doc__ = f"{name}: bottleneck blocks, stages {stages}, {groups} groups × {group_width}d."
    register_model(build, name=name)


def _register_vgg(name: str) -> None:
    def build(
        num_classes: int = 200,
        *,
        norm: Literal["bn", "none"] = "bn",
        dropout: Probability = 0.5,
        width: PositiveNumber = 1.0,
        head: Literal["compact", "imagenet"] = "compact",
    ):
        from fasttrain.models.vgg import VGG, VGG_CONFIGS

        return VGG(VGG_CONFIGS[name], num_classes, norm=norm, dropout=dropout, width=width, head=head)

    build.__doc__ = f"{name} with a three-layer fully connected head."
    register_model(build, name=name)


def _register_t2t_vit(name: str, embed: int, blocks: int, heads: int) -> None:
    def build(
        num_classes: int = 200,
        *,
        img_size: PositiveInt = 64,
        t2t_kernels: ThreeSplits = (3, 3, 3),
        t2t_strides: ThreeSplits = (2, 2, 2),
        token_dim: PositiveInt = 64,
        embed_dim: PositiveInt = embed,
        depth: PositiveInt = blocks,
        num_heads: PositiveInt = heads,
        mlp_ratio: PositiveNumber = 3.0,
        drop_path: Probability = 0.1,
        dropout: Probability = 0.0,
        attn_dropout: Probability = 0.0,
    ):
        from fasttrain.models.t2t_vit import T2TViT

        return T2TViT(num_classes, img_size=img_size, t2t_kernels=t2t_kernels, t2t_strides=t2t_strides,
                      token_dim=token_dim, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                      drop_path=drop_path, dropout=dropout, attn_dropout=attn_dropout)

    build.__doc__ = f"{name}: embed {embed}, depth {blocks}, {heads} heads, MLP ratio 3, token dim 64."
    register_model(build, name=name)


for _name, (_block, _stages) in RESNETS.items():
    _register_resnet(_name, _block, _stages)
for _name, (_stages, _groups, _group_width) in RESNEXTS.items():
    _register_resnext(_name, _stages, _groups, _group_width)
for _name in VGGS:
    _register_vgg(_name)
for _name, (_embed, _blocks, _heads) in T2T_VITS.items():
    _register_t2t_vit(_name, _embed, _blocks, _heads)
