"""`python -m fasttrain export`: write a model as safetensors / torch.export / ONNX, checked against the eager model.

The artifact is written into a hidden staging folder next to --out, loaded back and run on a real batch;
only when its logits match the eager model's within the tolerance are it and its JSON sidecar moved to
--out (atomically, sidecar first). A failed check leaves nothing at --out.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fasttrain.errors import OneLineArgumentParser, UserError
from fasttrain.inference import export_formats as fmt

CHECK_BATCH = 32


def export_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m fasttrain export",
                              description="Export a trained model and check the artifact's logits against the eager model.")
    p.add_argument("--ckpt", required=True, help="best_model.pt, a checkpoints/ckpt_*.pt file or a .safetensors bundle")
    p.add_argument("--format", required=True, help=f"one of: {', '.join(fmt.FORMATS)}")
    p.add_argument("--out", required=True, help="artifact path (a JSON sidecar with the model card is written beside it)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    p.add_argument("--input", choices=["uint8", "float"], default="uint8",
                   help="program input (export/onnx): uint8 RGB NCHW pixels 0..255 with the training normalisation "
                        "inside (default), or float NCHW already normalized")
    p.add_argument("--images", nargs="+", metavar="IMAGE_OR_DIR",
                   help="images to check the export on when the training cache is not at hand")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |logit difference| allowed, relative to max(1, largest |logit|) (default 1e-4)")
    p.add_argument("--run-dir", help="for a checkpoint without a model card: its run directory")
    p.add_argument("--debug", action="store_true")
    return p


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


@dataclass
class CheckResult:
    images: int
    source: str
    max_abs_diff: float
    allowed: float
    top1_agree: bool


def check_batch(loaded, images: list[str] | None) -> tuple[np.ndarray, str]:
    """A real uint8 NHWC batch: the cache's test (or val) split, else the given images, else the card's own."""
    from fasttrain.data.cache import CacheError, open_cache

    size = loaded.card["image_size"]
    if images:
        from fasttrain.inference.image_files import decoded_batches, list_images

        paths = list_images(images)[:CHECK_BATCH]
        _, pixels, failed = next(decoded_batches(paths, size, CHECK_BATCH))
        if failed:
            raise UserError(f"--images: cannot read {failed[0][0]} ({failed[0][1]}); give readable images")
        return pixels, f"{len(pixels)} of the given images"
    cache_dir = loaded.card.get("cache_dir")
    if cache_dir and Path(cache_dir).is_dir():
        try:
            cache = open_cache(cache_dir)
        except CacheError:
            cache = None
        if cache is not None and cache.image_size == size and cache.num_classes == loaded.card["num_classes"]:
            split = next((s for s in ("test", "val") if s in cache.splits and cache.count(s) > 0), None)
            if split is not None:
                pixels, _ = cache.split(split)
                return np.ascontiguousarray(pixels[:CHECK_BATCH]), f"{min(CHECK_BATCH, len(pixels))} {split} images of {cache_dir}"
    own = loaded.check_images()
    if len(own) == 0:
        raise UserError(f"no images to check the export on: the training cache {cache_dir} is gone and {loaded.path} "
                        f"carries none; pass some with --images")
    return own, f"the {len(own)} check images carried in {loaded.path.name}"


def _as_input(pixels_nhwc: np.ndarray, float_input: bool, loaded) -> np.ndarray:
    """The batch as the artifact takes it: uint8 NCHW, or normalized float NCHW."""
    nchw = np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2))
    if not float_input:
        return nchw
    net = loaded.pixels_to_logits()
    return (torch.from_numpy(nchw).float() * net.scale + net.shift).numpy()


def verify(run: fmt.Runner, eager: fmt.Runner, batch: np.ndarray, source: str, tolerance: float) -> CheckResult:
    """Compare logits on the whole batch and on one image (a second batch size shows the batch is dynamic)."""
    worst, agree, scale = 0.0, True, 1.0
    for part in (batch, batch[:1]):
        want, got = eager(part), run(part)
        if got.shape != want.shape:
            raise UserError(f"the exported artifact returns logits of shape {got.shape} for a batch of {len(part)}, "
                            f"the model {want.shape}; nothing was written")
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
        agree &= bool((got.argmax(1) == want.argmax(1)).all())
    return CheckResult(len(batch), source, worst, tolerance * scale, agree)


def write_artifact(loaded, format_name: str, staged: Path, float_input: bool, pixels: np.ndarray,
                   batch: np.ndarray) -> None:
    """Write the artifact to `staged`; `pixels` (uint8 NHWC) and `batch` (its input form) are real images."""
    from fasttrain.inference.loaded import card_to_text

    text = card_to_text(dict(loaded.card, weights=loaded.weights, input="float" if float_input else "uint8"))
    if format_name == "safetensors":
        own = loaded.card.get("check_images")
        check_images = own if torch.is_tensor(own) and len(own) else torch.from_numpy(pixels[:8])
        fmt.write_safetensors(loaded.module.state_dict(), check_images, text, staged)
        return
    net = loaded.module if float_input else loaded.pixels_to_logits()
    writer = fmt.write_export if format_name == "export" else fmt.write_onnx
    writer(net, torch.from_numpy(batch[:2]), text, staged)


def export_model(loaded, format_name: str, out: Path, *, float_input: bool, images: list[str] | None,
                 tolerance: float) -> CheckResult:
    """Write, load back, check; move to `out` (and its sidecar) only when the check passes."""
    from fasttrain.atomic import atomic_write, atomic_write_json
    from fasttrain.inference.loaded import card_json

    pixels, source = check_batch(loaded, images)
    batch = _as_input(pixels, float_input, loaded)
    eager_net = loaded.module if float_input else loaded.pixels_to_logits()
    eager = fmt.torch_runner(eager_net.eval())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        staged = staging / f"model{fmt.SUFFIXES[format_name]}"
        write_artifact(loaded, format_name, staged, float_input, pixels, batch)
        result = verify(fmt.LOADERS[format_name](staged, float_input), eager, batch, source, tolerance)
        if result.max_abs_diff > result.allowed or not result.top1_agree:
            raise UserError(f"the {format_name} export does not match the eager model on {source}: max |logit "
                            f"difference| {result.max_abs_diff:.3g} > allowed {result.allowed:.3g}"
                            f"{'' if result.top1_agree else ', and a top-1 class differs'}; nothing was written to {out}")
        sidecar = dict(card_json(loaded.card), weights=loaded.weights, export_format=format_name,
                       input="float" if float_input else "uint8",
                       check={"images": result.images, "source": result.source,
                              "max_abs_logit_diff": result.max_abs_diff, "allowed": result.allowed})
        atomic_write_json(sidecar_path(out), sidecar)  # first: an artifact at `out` always has its card beside it
        try:
            with open(staged, "rb") as src:
                atomic_write(out, lambda dst: shutil.copyfileobj(src, dst, 16 << 20))
        except BaseException:
            sidecar_path(out).unlink(missing_ok=True)
            raise
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_main(argv: list[str]) -> int:
    from fasttrain.inference.loaded import open_model

    args = export_parser().parse_args(argv)
    if args.format not in fmt.FORMATS:
        from fasttrain.errors import did_you_mean

        raise UserError(f"unknown export format {args.format!r}; {did_you_mean(args.format, list(fmt.FORMATS))}"
                        f"choose one of: {', '.join(fmt.FORMATS)}")
    if not args.tolerance >= 0:
        raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the artifact's file path, e.g. {out / ('model' + fmt.SUFFIXES[args.format])}")
    if args.format == "onnx":
        fmt.require_onnx()
    if args.format == "safetensors" and args.input == "float":
        raise UserError("--input applies to --format export and onnx (a safetensors bundle holds weights, not a program)")
    loaded = open_model(args.ckpt, run_dir=args.run_dir, ema=args.ema)
    result = export_model(loaded, args.format, out, float_input=args.input == "float", images=args.images,
                          tolerance=args.tolerance)
    print(f"exported {loaded.card['model']} ({loaded.weights} weights) as {args.format} to {out} (model card in "
          f"{sidecar_path(out)}); checked on {result.source}: max |logit difference| {result.max_abs_diff:.3g} "
          f"(allowed {result.allowed:.3g}), top-1 identical")
    return 0
