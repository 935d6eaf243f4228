"""Command line for the data cache: `python -m fasttrain.data prepare | synth | info`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from fasttrain.errors import OneLineArgumentParser, run_cli


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m fasttrain.data",
                            description="Build, inspect and verify fasttrain's uint8 image cache.")
    commands = parser.add_subparsers(dest="command", metavar="{prepare,synth,info}", parser_class=OneLineArgumentParser)
    commands.required = True

    prepare = commands.add_parser("prepare", help="decode a source into the cache (reused when up to date)")
    prepare.add_argument("--source", required=True, choices=["tiny-imagenet", "imagefolder"])
    prepare.add_argument("--root", required=True,
                         help="data set directory (caches go to ROOT/process/<size>px-<hash>/, one per size and split)")
    prepare.add_argument("--download", action="store_true", help="fetch and extract tiny-imagenet-200.zip into ROOT")
    prepare.add_argument("--image-size", type=int, default=64, help="cached images are SIZE x SIZE (default 64)")
    prepare.add_argument("--val-ratio", type=float, default=0.2, help="share of each class held out as val (0.2)")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the train/val split (0)")
    prepare.add_argument("--val-source", choices=["carve", "folder"], default="carve",
                         help="carve: hold out --val-ratio of train/ as val (the study's rule; an ImageFolder val/ is "
                              "then test unless test/ exists); folder: an ImageFolder tree's own val/ is val, test/ test")
    prepare.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores, one per 2000 images at most)")
    prepare.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping")
    prepare.add_argument("--cache-dir", default=None,
                         help="this one cache's location (default ROOT/process/<size>px-<hash>/); a cache of other "
                              "parameters there is refused, not replaced")
    prepare.add_argument("--no-rebuild", action="store_true", help="fail instead of rebuilding a stale cache")

    synth = commands.add_parser("synth", help="write the learnable synthetic data set (Tiny-ImageNet layout)")
    synth.add_argument("--out", required=True, help="directory to write the tree into")
    synth.add_argument("--classes", type=int, default=10)
    synth.add_argument("--per-class", type=int, default=500, help="train images per class")
    synth.add_argument("--val-per-class", type=int, default=50, help="labelled val (= test split) images per class")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=1, help="processes writing files (same bytes for any count)")

    info = commands.add_parser("info", help="counts, sizes and classes of a cache, or the list of a data root's caches; "
                                            "--verify checks every checksum")
    info.add_argument("cache_dir", help="a cache, or a data root (or its process/ folder) to list its caches")
    info.add_argument("--verify", action="store_true", help="also check the sha256 of every file (reads it all)")
    for sub in (prepare, synth, info):
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _split_line(meta: dict) -> str:
    split = meta["split"]
    if split.get("val_source") == "folder":
        line = f"val from the source's {split.get('val_from')}/ folder"
    else:
        line = f"val carved: val_ratio {split['val_ratio']}, seed {split['seed']}, stratified per class"
    test_from = split.get("test_from", meta["source"].get("test_from"))
    return line + (f"; test from {test_from}/" if test_from else "; no test split")


def _print_cache_list(path: str, verify: bool) -> None:
    from fasttrain.data.cache import CacheError, describe_params, find_caches, open_cache

    found = find_caches(path)
    if not found:
        open_cache(path)  # the one-line error of a path that is neither a cache nor holds any
    print(f"{len(found)} cache{'' if len(found) == 1 else 's'} under {path}:")
    for cache_dir in found:
        try:
            cache = open_cache(cache_dir, verify=verify)
        except CacheError as err:
            if verify:
                raise
            print(f"  {cache_dir.name:<20} unusable: {err}")
            continue
        counts = ", ".join(f"{split} {cache.count(split)}" for split in cache.splits)
        size = sum(entry[kind]["bytes"] for entry in cache.meta["splits"].values() for kind in ("images", "labels"))
        print(f"  {cache_dir.name:<20} {describe_params(cache.params)}; {counts}; {_megabytes(size)}")
    if verify:
        print("verify     every sha256 checksum of every cache matches")


def _print_info(cache_dir: str, verify: bool) -> None:
    import numpy as np

    from fasttrain.data.cache import META_NAME, open_cache

    if not (Path(cache_dir) / META_NAME).is_file() and Path(cache_dir).is_dir():
        return _print_cache_list(cache_dir, verify)
    cache = open_cache(cache_dir, verify=verify)
    meta = cache.meta
    source = meta["source"]
    print(f"cache      {cache.path}")
    print(f"format     version {meta['format_version']}, {meta.get('created_by', '?')}")
    print(f"source     {source['kind']} at {source['root']} (fingerprint {source['fingerprint'][:16]}…)")
    print(f"images     {cache.image_size}x{cache.image_size} RGB uint8, {cache.num_classes} classes")
    print(f"split      {_split_line(meta)}")
    stats = meta.get("pixel_stats")
    if stats:
        print(f"mean/std   train split: mean {stats['mean']}, std {stats['std']} (0..1 scale)")
    counts = {}
    for split in cache.splits:
        entry = meta["splits"][split]
        _, labels = cache.split(split)
        counts[split] = np.bincount(labels, minlength=cache.num_classes)
        size = entry["images"]["bytes"] + entry["labels"]["bytes"]
        print(f"{split:<10} {entry['count']} images, {_megabytes(size)}, per class min {counts[split].min()} "
              f"max {counts[split].max()}")
    skipped = meta.get("skipped", [])
    print(f"skipped    {len(skipped)} unreadable file(s)" + (f", first: {skipped[0]['path']}" if skipped else ""))
    header = "".join(f"{split:>8}" for split in cache.splits)
    print(f"\n{'class':<12}{header}  name")
    for index, (class_id, name) in enumerate(zip(cache.class_ids, cache.class_names)):
        row = "".join(f"{counts[split][index]:>8}" for split in cache.splits)
        print(f"{class_id:<12}{row}  {name}")
    if verify:
        print("\nverify     every sha256 checksum matches")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "prepare":
        from fasttrain.data.prepare import prepare_cache

        path = prepare_cache(args.source, args.root, cache_dir=args.cache_dir, image_size=args.image_size,
                             val_ratio=args.val_ratio, seed=args.seed, val_source=args.val_source,
                             workers=args.workers, strict=args.strict,
                             download=args.download, rebuild=not args.no_rebuild)
        print(path)
    elif args.command == "synth":
        from fasttrain.data.synthetic import write_synthetic

        print(write_synthetic(args.out, classes=args.classes, per_class=args.per_class,
                              val_per_class=args.val_per_class, size=args.size, seed=args.seed,
                              workers=args.workers))
    else:
        _print_info(args.cache_dir, args.verify)
    return 0


def _terminate_as_interrupt(signum, frame):
    # SIGTERM (kill, a job scheduler) unwinds like Ctrl-C so temporary build directories are removed.
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    raise SystemExit(run_cli(main))
