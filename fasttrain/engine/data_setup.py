"""From the [data] section to an opened, verified cache: synthesize or prepare once (rank 0), then open."""

from __future__ import annotations

from pathlib import Path

from fasttrain.config import DataConfig
from fasttrain.engine.distributed import DistInfo, broadcast_object
from fasttrain.errors import UserError


def cache_dir_for(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.root) / "process"


def prepare_command(cfg: DataConfig) -> str:
    source = "tiny-imagenet" if cfg.source == "synthetic" else cfg.source
    cmd = f"python -m fasttrain.data prepare --source {source} --root {cfg.root} --image-size {cfg.image_size}"
    if cfg.source == "tiny-imagenet":
        cmd += " --download"
    return cmd


def _check_source_present(cfg: DataConfig) -> None:
    root = Path(cfg.root)
    if cfg.source == "synthetic" or root.exists():
        return
    if cfg.source == "tiny-imagenet" and cfg.download:
        return
    if cfg.source == "tiny-imagenet":
        raise UserError(
            f"data root {root} does not exist; download and prepare Tiny-ImageNet with: {prepare_command(cfg)} "
            f"(or set data.download = true)"
        )
    raise UserError(f"data root {root} does not exist; point data.root at an ImageFolder tree with train/<class>/ images")


def build_cache(cfg: DataConfig):
    """Make sure the cache exists and matches the config; return the opened Cache (single process)."""
    from fasttrain.data.cache import CacheError, open_cache
    from fasttrain.data.prepare import prepare_cache

    _check_source_present(cfg)
    source = cfg.source
    if source == "synthetic":
        from fasttrain.data.synthetic import write_synthetic

        write_synthetic(
            cfg.root,
            classes=cfg.synth_classes,
            per_class=cfg.synth_per_class,
            val_per_class=cfg.synth_val_per_class,
            size=cfg.image_size,
            seed=cfg.split_seed,
        )
        source = "tiny-imagenet"  # the synthetic set is written in Tiny-ImageNet layout
    path = prepare_cache(
        source,
        cfg.root,
        cache_dir=cache_dir_for(cfg),
        image_size=cfg.image_size,
        val_ratio=cfg.val_ratio,
        seed=cfg.split_seed,
        workers=cfg.prepare_workers or None,
        download=cfg.download,
    )
    # prepare_cache checks sizes and headers only; the checksums also catch a flipped byte before training uses it.
    try:
        return open_cache(path, verify=True)
    except CacheError as err:
        raise CacheError(f"{err} (delete {path} and rerun: it is rebuilt from {cfg.root})") from None


def open_dataset(cfg: DataConfig, info: DistInfo):
    """Rank 0 builds the cache while the others wait; then every rank opens it.

    Rank 0's error reaches every rank, so no rank waits on a barrier that will never come.
    """
    from fasttrain.data.cache import open_cache

    error = None
    if info.is_main:
        try:
            cache = build_cache(cfg)
        except UserError as err:
            error = str(err)
    error = broadcast_object(error, info)
    if error is not None:
        raise UserError(error)
    return cache if info.is_main else open_cache(cache_dir_for(cfg))
