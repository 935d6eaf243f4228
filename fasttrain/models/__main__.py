"""`python -m fasttrain.models`: a table of every registered model's parameters and GFLOPs per 64×64 image."""

from __future__ import annotations

import argparse

import torch

from fasttrain.errors import run_cli
from fasttrain.models.counting import count_parameters, forward_flops
from fasttrain.models.registry import create_model, list_models


def model_table(num_classes: int, image_size: int) -> list[tuple[str, int, float]]:
    """(name, parameters, GFLOPs per image) of each registered model with its default knobs.

    Built on the meta device: no weights are allocated and nothing is computed, only shapes.
    """
    rows = []
    with torch.device("meta"):
        for name in list_models():
            knobs = {"img_size": image_size} if name.startswith("t2t_vit") else {}
            model = create_model(name, num_classes, **knobs)
            rows.append((name, count_parameters(model), forward_flops(model, image_size) / 1e9))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fasttrain.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    rows = model_table(args.num_classes, args.image_size)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'model':<{width}}  {'parameters':>12}  {'GFLOPs/image':>12}")
    for name, params, gflops in rows:
        print(f"{name:<{width}}  {params:>12,}  {gflops:>12.3f}")
    print(f"({args.num_classes} classes, {args.image_size}×{args.image_size} input, default knobs; 1 FLOP = 1 multiply or add)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
