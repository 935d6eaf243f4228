"""The typed configuration schema, TOML loading, `--set` overrides and cross-field validation."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from fasttrain.errors import UserError, did_you_mean

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; anything near this is a mistake or an attack

STUDY_MEAN = (0.4802, 0.4481, 0.3975)
STUDY_STD = (0.2302, 0.2265, 0.2262)


class ConfigError(UserError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "tiny-imagenet", "imagefolder"] = "synthetic"
    """Where images come from; "synthetic" writes the learnable JPEG set under `root` on first use."""
    root: str = "data/synthetic"
    """Data set root (Tiny-ImageNet or ImageFolder layout)."""
    cache_dir: str = ""
    """Decoded uint8 cache; empty means `<root>/process` (the study's convention)."""
    download: bool = False
    """Download Tiny-ImageNet into `root` when it is missing."""
    image_size: int = 64
    val_ratio: float = 0.2
    """Share of each class's train images held out as the val split."""
    split_seed: int = 0
    prepare_workers: int = 0
    """Decode processes for prepare; 0 means all cores."""
    synth_classes: int = 10
    synth_per_class: int = 500
    synth_val_per_class: int = 50
    backend: Literal["auto", "dali", "torch", "reference"] = "auto"
    """Input pipeline; "auto" picks the fastest measured for the device (see README)."""
    augment: Literal["rrc", "pad_crop", "none"] = "rrc"
    """Train augmentation: RandomResizedCrop (the study's), pad-and-random-crop, or none."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    pad: int = 4
    """Padding for augment = "pad_crop"."""
    hflip: float = 0.5
    """Probability of a horizontal flip in training."""
    mean: tuple[float, float, float] = STUDY_MEAN
    std: tuple[float, float, float] = STUDY_STD
    loader_workers: int = 2
    """DataLoader worker processes of the reference pipeline."""
    output_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device_memory_cap_gb: float = 8.0
    """The torch pipeline keeps a split on the device only below this size."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"
    """A name from `python -m fasttrain.models`."""
    norm: Optional[str] = None
    dropout: Optional[float] = None
    width: Optional[float] = None
    skip: Optional[bool] = None
    stem: Optional[str] = None
    layers: Optional[list[int]] = None
    zero_init_residual: Optional[bool] = None
    cardinality: Optional[int] = None
    base_width: Optional[int] = None
    drop_path: Optional[float] = None
    attn_dropout: Optional[float] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    t2t_kernels: Optional[list[int]] = None
    t2t_strides: Optional[list[int]] = None
    token_dim: Optional[int] = None
    mlp_ratio: Optional[float] = None
    img_size: Optional[int] = None
    """T2T-ViT input size; unset means data.image_size."""
    head: Optional[str] = None
    """VGG classifier head: "compact" (64×64 default) or "imagenet" (torchvision's)."""

    def knobs(self) -> dict[str, Any]:
        """The knobs the user set (unset ones keep the model's own defaults)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "name" and getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    lr_reference_batch: int = 0
    """When > 0, the learning rate is lr × batch_size / lr_reference_batch (linear scaling)."""
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    """Apply weight decay to norm weights and biases too (off: the usual modern choice)."""


@dataclass(frozen=True)
class SchedConfig:
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    """Epochs at which the step schedule multiplies the lr by gamma."""
    gamma: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    """The global batch: each of N ranks takes batch_size / N."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """"auto": bf16 where the device runs it natively (most GPUs; CPUs with AVX512-BF16/AMX), fp16 on older GPUs, else off."""
    channels_last: bool = True
    tf32: bool = True
    deterministic: bool = False
    """Deterministic algorithms (bit-identical reruns on CPU; slower on GPU)."""
    label_smoothing: float = 0.0
    mixup: float = 0.0
    """Mixup alpha (0 = off)."""
    cutmix: float = 0.0
    """CutMix alpha (0 = off)."""
    mix_prob: float = 1.0
    ema: bool = False
    ema_decay: float = 0.9998
    grad_clip: float = 0.0
    """Clip the global grad norm to this value (0 = off)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the global batch is split across them."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = run all epochs); for smoke tests and benchmarks."""
    eval_every_epochs: int = 1


@dataclass(frozen=True)
class CompileConfig:
    mode: Literal["off", "default", "max-autotune"] = "off"


@dataclass(frozen=True)
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """"auto": NCCL on GPU, gloo on CPU."""
    timeout_s: int = 1800


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 50
    """Host sync, metrics.jsonl line and TensorBoard scalars every this many steps."""
    tensorboard: bool = True
    progress: bool = True
    """tqdm bar per epoch on rank 0."""


@dataclass(frozen=True)
class CkptConfig:
    every_epochs: int = 1
    every_steps: int = 0
    """Also save every this many optimizer steps (0 = off)."""
    keep: int = 3
    """How many of the latest checkpoints to keep."""


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    train: TrainConfig = TrainConfig()
    compile: CompileConfig = CompileConfig()
    dist: DistConfig = DistConfig()
    log: LogConfig = LogConfig()
    ckpt: CkptConfig = CkptConfig()


def _section_types() -> dict[str, type]:
    return typing.get_type_hints(Config)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0])
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(args[0], "values")
        n = f"{len(args)} " if origin is tuple and Ellipsis not in args else ""
        return f"a list of {n}{inner}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the schema's Python type."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is typing.Union:
        if value is None and type(None) in typing.get_args(tp):
            return None  # an unset optional knob (from a checkpoint's config; TOML itself has no null)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(
                f"{where} must be {_type_name(tp)}, got {value!r}; {did_you_mean(str(value), [str(a) for a in typing.get_args(tp)])}".rstrip("; ")
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if origin is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise bad
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return origin(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported schema type {tp!r}")  # a schema bug, not a user error


def _build_section(section_cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(section_cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"{where}: unknown key '{key}' in [{section_cls_name(section_cls)}]; "
                f"{did_you_mean(key, list(hints))}valid keys: {', '.join(hints)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}: [{section_cls_name(section_cls)}] {key}")
    return section_cls(**kwargs)


def section_cls_name(section_cls: type) -> str:
    for name, cls in _section_types().items():
        if cls is section_cls:
            return name
    return section_cls.__name__


def from_dict(raw: dict[str, Any], where: str) -> Config:
    """Build a Config from nested plain data (a parsed TOML file), naming `where` in every error."""
    sections = _section_types()
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(
                f"{where}: unknown section [{name}]; {did_you_mean(name, list(sections))}valid sections: {', '.join(sections)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: '{name}' must be a section ([{name}]), got a {type(values).__name__}")
        built[name] = _build_section(sections[name], values, where)
    return Config(**built)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain data, tuples as lists (what TOML and JSON hold)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return {
        sec.name: {f.name: plain(getattr(getattr(cfg, sec.name), f.name)) for f in dataclasses.fields(getattr(cfg, sec.name))}
        for sec in dataclasses.fields(cfg)
    }


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file with a size cap; syntax errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing file to --cfg, e.g. configs/quickstart.toml)")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit; is this the right file?")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: TOML syntax error: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: TOML nested too deeply to parse; a config needs only [section] tables") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a config must be TOML text") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value`, the value a TOML literal (bare words are accepted as strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. train.epochs=3")
    dotted, literal = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    literal = literal.strip()
    try:
        value = tomllib.loads(f"v = {literal}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        if literal and literal.replace("-", "").replace("_", "").replace(".", "").replace("/", "").isalnum():
            value = literal
        else:
            raise ConfigError(
                f"override '{text}': value {literal!r} is not a TOML literal (quote strings, e.g. {dotted}=\"name\"; lists as [1, 2])"
            ) from None
    return section, key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `section.key=value` applied (checked later by from_dict)."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    hints = _section_types()
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in hints:
            raise ConfigError(
                f"override '{text}': unknown section [{section}]; {did_you_mean(section, list(hints))}valid sections: {', '.join(hints)}"
            )
        field_types = typing.get_type_hints(hints[section])
        if key in field_types and isinstance(value, (int, float)) and not isinstance(value, bool) and field_types[key] is str:
            value = str(value)
        merged.setdefault(section, {})[key] = value
    return merged


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML file (or only defaults when path is None), apply overrides, check types and rules."""
    raw = read_toml(path) if path is not None else {}
    where = str(path) if path is not None else "<defaults>"
    cfg = from_dict(apply_overrides(raw, list(overrides)), where)
    validate(cfg, where)
    return cfg


def validate(cfg: Config, where: str = "config") -> None:
    """Cross-field and range rules; never mutates the config."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: [{key.split('.')[0]}] {key.split('.', 1)[1]} {msg}")

    d, t, o, s = cfg.data, cfg.train, cfg.optim, cfg.sched
    need(0.0 < d.val_ratio < 1.0, "data.val_ratio", f"must be between 0 and 1 (exclusive), got {d.val_ratio}")
    need(d.image_size >= 8, "data.image_size", f"must be at least 8, got {d.image_size}")
    need(0 < d.crop_scale[0] <= d.crop_scale[1] <= 1.0, "data.crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {list(d.crop_scale)}")
    need(0 < d.crop_ratio[0] <= d.crop_ratio[1], "data.crop_ratio", f"must be [min, max] with 0 < min <= max, got {list(d.crop_ratio)}")
    need(0.0 <= d.hflip <= 1.0, "data.hflip", f"must be a probability in [0, 1], got {d.hflip}")
    need(all(x > 0 for x in d.std), "data.std", f"must be positive, got {list(d.std)}")
    need(d.pad >= 0, "data.pad", f"must be >= 0, got {d.pad}")
    need(d.synth_classes >= 2, "data.synth_classes", f"must be at least 2, got {d.synth_classes}")
    need(d.synth_per_class >= 2, "data.synth_per_class", f"must be at least 2, got {d.synth_per_class}")
    need(d.loader_workers >= 0, "data.loader_workers", f"must be >= 0, got {d.loader_workers}")
    need(d.prepare_workers >= 0, "data.prepare_workers", f"must be >= 0, got {d.prepare_workers}")
    need(t.epochs >= 1, "train.epochs", f"must be at least 1, got {t.epochs}")
    need(t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}")
    need(t.grad_accum >= 1, "train.grad_accum", f"must be at least 1, got {t.grad_accum}")
    need(t.batch_size % t.grad_accum == 0, "train.grad_accum", f"({t.grad_accum}) must divide train.batch_size ({t.batch_size})")
    need(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
    need(t.mixup >= 0 and t.cutmix >= 0, "train.mixup", "and train.cutmix must be >= 0")
    need(0.0 <= t.mix_prob <= 1.0, "train.mix_prob", f"must be in [0, 1], got {t.mix_prob}")
    need(0.0 < t.ema_decay < 1.0, "train.ema_decay", f"must be in (0, 1), got {t.ema_decay}")
    need(t.grad_clip >= 0, "train.grad_clip", f"must be >= 0, got {t.grad_clip}")
    need(t.max_steps >= 0, "train.max_steps", f"must be >= 0, got {t.max_steps}")
    need(t.eval_every_epochs >= 1, "train.eval_every_epochs", f"must be at least 1, got {t.eval_every_epochs}")
    need(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    need(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    need(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    need(o.lr_reference_batch >= 0, "optim.lr_reference_batch", f"must be >= 0, got {o.lr_reference_batch}")
    need(not (o.nesterov and o.name != "sgd"), "optim.nesterov", "applies to optim.name = \"sgd\" only")
    need(s.warmup_epochs >= 0, "sched.warmup_epochs", f"must be >= 0, got {s.warmup_epochs}")
    need(s.warmup_epochs < t.epochs or s.warmup_epochs == 0, "sched.warmup_epochs", f"({s.warmup_epochs}) must be shorter than train.epochs ({t.epochs})")
    need(s.min_lr >= 0, "sched.min_lr", f"must be >= 0, got {s.min_lr}")
    need(0 < s.gamma <= 1, "sched.gamma", f"must be in (0, 1], got {s.gamma}")
    need(list(s.milestones) == sorted(set(s.milestones)), "sched.milestones", f"must be increasing, got {list(s.milestones)}")
    need(s.name != "step" or len(s.milestones) > 0, "sched.milestones", "must list at least one epoch when sched.name = \"step\"")
    need(cfg.log.every_steps >= 1, "log.every_steps", f"must be at least 1, got {cfg.log.every_steps}")
    need(cfg.ckpt.every_epochs >= 0, "ckpt.every_epochs", f"must be >= 0, got {cfg.ckpt.every_epochs}")
    need(cfg.ckpt.every_steps >= 0, "ckpt.every_steps", f"must be >= 0, got {cfg.ckpt.every_steps}")
    need(cfg.ckpt.keep >= 1, "ckpt.keep", f"must be at least 1, got {cfg.ckpt.keep}")
    need(cfg.dist.timeout_s >= 1, "dist.timeout_s", f"must be at least 1, got {cfg.dist.timeout_s}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: Config) -> str:
    """The full resolved config as TOML (unset model knobs are left out)."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
