"""`python -m fasttrain predict`: top-k classes of image files and folders, printed and optionally as JSON Lines / CSV."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import torch

from fasttrain.errors import OneLineArgumentParser, UserError

PARTIAL_FAILURE_EXIT = 1


def predict_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m fasttrain predict",
                              description="Classify image files and folders (searched recursively) with a trained model.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--ckpt", required=True, help="best_model.pt, a checkpoints/ckpt_*.pt file or an exported .safetensors bundle")
    p.add_argument("--run-dir", help="for a checkpoint written before checkpoints carried their model card: its run directory")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--tta", choices=["none", "flip"],
                   help="test-time augmentation (default: the run's [eval] tta, kept in the model card, as eval uses)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", metavar="PATH", help="also write one JSON object per image (JSON Lines) to PATH")
    p.add_argument("--csv", metavar="PATH", help="also write a CSV (path, rank, class_index, class_id, class_name, probability)")
    p.add_argument("--quiet", action="store_true", help="do not print the per-image lines")
    p.add_argument("--debug", action="store_true")
    return p


@torch.no_grad()
def predict_files(loaded, paths: list[Path], *, topk: int, batch_size: int, device: torch.device,
                  tta: str | None = None, on_failure=None) -> list[dict]:
    """One record per decodable file: {"path", "topk": [{class_index, class_id, class_name, probability}, ...]}.

    The network and test-time augmentation are eval's (LoadedModel.network, engine.evaluate.tta_logits; `tta`
    None: the card's). `on_failure(path, reason)` is called for every file that cannot be decoded.
    """
    from tqdm import tqdm

    from fasttrain.engine.evaluate import tta_logits
    from fasttrain.inference.image_files import decoded_batches

    net = loaded.network(device)
    tta = tta or loaded.tta
    records = []
    k = min(topk, loaded.card["num_classes"])
    with tqdm(total=len(paths), unit="img", desc="predict", disable=None if len(paths) > batch_size else True,
              file=sys.stderr) as progress:
        for names, pixels, failed in decoded_batches(paths, loaded.card["image_size"], batch_size):
            for path, reason in failed:
                if on_failure is not None:
                    on_failure(path, reason)
            if len(names):
                batch = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2)  # NHWC memory: channels_last NCHW
                probs = tta_logits(net, batch, tta).softmax(dim=1)
                top_p, top_i = probs.topk(k, dim=1)
                for path, p_row, i_row in zip(names, top_p.cpu().tolist(), top_i.cpu().tolist()):
                    records.append({"path": str(path), "topk": [
                        {"class_index": i, "class_id": loaded.card["class_ids"][i],
                         "class_name": loaded.card["class_names"][i], "probability": p}
                        for p, i in zip(p_row, i_row)]})
            progress.update(len(names) + len(failed))
    return records


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def csv_text(records: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "rank", "class_index", "class_id", "class_name", "probability"])
    for record in records:
        for rank, hit in enumerate(record["topk"], start=1):
            writer.writerow([record["path"], rank, hit["class_index"], hit["class_id"], hit["class_name"],
                             f"{hit['probability']:.6g}"])
    return out.getvalue()


def format_line(record: dict) -> str:
    """`path: id 'name' p  …`; a class whose id is its name (ImageFolder's folders) is named once."""
    def hit(h: dict) -> str:
        label = repr(h["class_name"]) if h["class_id"] == h["class_name"] else f"{h['class_id']} {h['class_name']!r}"
        return f"{label} {h['probability']:.4f}"

    return f"{record['path']}: {'  '.join(hit(h) for h in record['topk'])}"


def _check_output(path: str | None, flag: str) -> None:
    if path is not None and (Path(path).is_dir() or not Path(path).absolute().parent.is_dir()):
        raise UserError(f"{flag} {path}: {'is a folder' if Path(path).is_dir() else 'its folder does not exist'}; "
                        f"give a file path in an existing folder")


def predict_main(argv: list[str]) -> int:
    from fasttrain.atomic import atomic_write_text
    from fasttrain.inference.image_files import list_images
    from fasttrain.engine.distributed import pick_cli_device
    from fasttrain.inference.loaded import open_model

    args = predict_parser().parse_args(argv)
    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_output(args.json, "--json")
    _check_output(args.csv, "--csv")
    device = pick_cli_device(args.device)
    paths = list_images(args.inputs)
    loaded = open_model(args.ckpt, run_dir=args.run_dir, ema=args.ema)
    failures = []

    def report_failure(path: Path, reason: str) -> None:
        failures.append(path)
        print(f"cannot read {path}: {reason}; skipped", file=sys.stderr, flush=True)

    records = predict_files(loaded, paths, topk=args.topk, batch_size=args.batch_size, device=device, tta=args.tta,
                            on_failure=report_failure)
    if args.json:
        atomic_write_text(args.json, jsonl_text(records))
    if args.csv:
        atomic_write_text(args.csv, csv_text(records))
    if not args.quiet:
        for record in records:
            print(format_line(record))
    return PARTIAL_FAILURE_EXIT if failures else 0
