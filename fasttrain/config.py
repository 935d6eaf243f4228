"""The typed configuration schema, TOML loading, `--set` overrides and cross-field validation."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from fasttrain.errors import did_you_mean
from fasttrain.models.registry import check_knobs
from fasttrain.schema import ConfigError, Range, build_dataclass, coerce  # noqa: F401  ConfigError, coerce: this module's API too

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; anything near this is a mistake or an attack

# The study's Tiny-ImageNet normalisation (docs/STUDY.md, Data): "from the data" on Tiny-ImageNet and the synthetic set.
STUDY_MEAN = (0.4802, 0.4481, 0.3975)
STUDY_STD = (0.2302, 0.2265, 0.2262)

# Bounds used by many fields; `coerce` refuses a value outside them when the config is read.
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveNumber = Annotated[float, Range(0.0, min_open=True)]
NonNegativeNumber = Annotated[float, Range(0.0)]
Probability = Annotated[float, Range(0.0, 1.0)]
CropScale = Annotated[float, Range(0.0, 1.0, min_open=True)]
Fraction = Annotated[float, Range(0.0, 1.0, max_open=True)]


@dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "tiny-imagenet", "imagefolder"] = "synthetic"
    """Where images come from; "synthetic" writes the learnable JPEG set under `root` on first use."""
    root: str = "data/synthetic"
    """Data set root (Tiny-ImageNet or ImageFolder layout)."""
    cache_dir: str = ""
    """Decoded uint8 cache; empty means `<root>/process/<size>px-<hash>/`, one cache per set of decode parameters."""
    download: bool = False
    """Download Tiny-ImageNet into `root` when it is missing."""
    image_size: Annotated[int, Range(8)] = 64
    val_ratio: Annotated[float, Range(0.0, 1.0, min_open=True, max_open=True)] = 0.2
    """Share of each class's train images held out as the val split."""
    split_seed: int = 0
    prepare_workers: NonNegativeInt = 0
    """Decode processes for prepare; 0 means all cores."""
    synth_classes: Annotated[int, Range(2)] = 10
    synth_per_class: Annotated[int, Range(2)] = 500
    synth_val_per_class: int = 50
    backend: Literal["auto", "dali", "torch", "reference"] = "auto"
    """Input pipeline; "auto" picks the fastest measured for the device (see README)."""
    augment: str = "rrc"
    """Train augmentation: RandomResizedCrop (the study's), pad-and-random-crop, none, or RandomResizedCrop + flip
    followed by RandAugment / TrivialAugmentWide (dali and reference backends; DALI's nvidia.dali.auto_aug)."""
    randaugment_n: int = 2
    """RandAugment: operations applied to each image."""
    randaugment_m: int = 9
    """RandAugment: magnitude bin, 0..30 (31 bins, as torchvision's and DALI's defaults)."""
    erasing: float = 0.0
    """Random erasing probability per train image (0 = off); torchvision's RandomErasing rule, applied on the device."""
    progressive_start_size: int = 0
    """Progressive resizing: train images start at this size and grow to image_size (0 = off)."""
    progressive_start_epoch: int = 0
    """Progressive resizing: last epoch at progressive_start_size; the size grows linearly after it."""
    progressive_end_epoch: int = 0
    """Progressive resizing: first epoch at full image_size."""
    progressive_step: int = 8
    """Progressive resizing: sizes are multiples of this, so a compiled model sees only a few shapes."""
    crop_scale: tuple[CropScale, CropScale] = (0.35, 1.0)
    """RandomResizedCrop's [min, max] share of the image area (min <= max)."""
    crop_ratio: tuple[PositiveNumber, PositiveNumber] = (3 / 4, 4 / 3)
    """RandomResizedCrop's [min, max] aspect ratio (min <= max)."""
    pad: NonNegativeInt = 4
    """Padding for augment = "pad_crop"."""
    hflip: Probability = 0.5
    """Probability of a horizontal flip in training."""
    mean: tuple[float, ...] = ()
    """Per-channel (R, G, B) mean on the 0..1 scale; empty: from the data (the train split's own, computed at prepare
    time; the study's values on Tiny-ImageNet and the synthetic set)."""
    std: tuple[PositiveNumber, ...] = ()
    """Per-channel std on the 0..1 scale; empty: from the data, as mean."""
    loader_workers: NonNegativeInt = 2
    """DataLoader worker processes of the reference pipeline."""
    output_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device_memory_cap_gb: float = 8.0
    """The torch pipeline keeps a split on the device only below this size."""
    val_source: Literal["carve", "folder"] = "carve"
    """Where the val split comes from: "carve" holds out val_ratio of each class of train/ (the study's rule; an
    ImageFolder val/ is then the test split unless there is a test/); "folder" (ImageFolder only): its own val/
    folder is the val split, test/ (if present) the test split."""

    def __post_init__(self):
        # "From the data" on Tiny-ImageNet and the synthetic set (prepared in its layout) is the study's measured
        # values, the ones its runs used; an ImageFolder tree's are resolved from its cache (prepare.with_mean_std).
        if self.source != "imagefolder":
            object.__setattr__(self, "mean", self.mean or STUDY_MEAN)
            object.__setattr__(self, "std", self.std or STUDY_STD)


@dataclass(frozen=True)
class ModelConfig:
    """[model]: `name` and the knobs set for it; the knob schema is the model builder's annotated signature."""

    name: str = "resnet18"
    """A name from `python -m fasttrain.models`."""
    knob_settings: tuple[tuple[str, Any], ...] = ()
    """(knob, value) pairs sorted by knob, checked against the builder; unset knobs keep the model's defaults."""

    @classmethod
    def from_table(cls, values: dict[str, Any], where: str) -> "ModelConfig":
        """Check a [model] table against its model's builder (types, ranges, nearest knob or model name)."""
        name = coerce(values.get("name", cls.name), str, f"{where}: [model] name")
        # None is an unset knob: checkpoints of earlier versions stored every knob of every family.
        knobs = {k: v for k, v in values.items() if k != "name" and v is not None}
        return cls(name, tuple(sorted(check_knobs(name, knobs, where=f"{where}: [model]").items())))

    def knobs(self) -> dict[str, Any]:
        """The knobs the user set (unset ones keep the model's own defaults)."""
        return dict(self.knob_settings)

    def to_table(self) -> dict[str, Any]:
        return {"name": self.name, **self.knobs()}


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveNumber = 0.2
    lr_reference_batch: NonNegativeInt = 0
    """When > 0, the learning rate is lr × batch_size / lr_reference_batch (linear scaling)."""
    momentum: Fraction = 0.9
    nesterov: bool = False
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    """Adam's moment decays, each in [0, 1)."""
    weight_decay: NonNegativeNumber = 5e-4
    decay_norm_and_bias: bool = False
    """Apply weight decay to norm weights and biases too (off: the usual modern choice)."""


@dataclass(frozen=True)
class SchedConfig:
    name: Literal["cosine", "step", "constant", "linear"] = "linear"
    """"linear": after warm-up, straight down to min_lr at the last step (budgeted training)."""
    warmup_epochs: NonNegativeNumber = 0.5
    """Shorter than train.epochs (0 = no warm-up)."""
    warmup_start_factor: Annotated[float, Range(0.0, 1.0)] = 0.01
    min_lr: NonNegativeNumber = 0.0
    milestones: list[int] = field(default_factory=list)
    """Epochs at which the step schedule multiplies the lr by gamma (increasing; at least one for name = "step")."""
    gamma: Annotated[float, Range(0.0, 1.0, min_open=True)] = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 256
    """The global batch: each of N ranks takes batch_size / N."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """"auto": bf16 on GPUs that have it, fp16 on older GPUs; on a CPU the faster of fp32 and bf16 as measured on the model."""
    channels_last: bool = True
    tf32: bool = True
    deterministic: bool = False
    """Deterministic algorithms (bit-identical reruns on CPU; slower on GPU)."""
    label_smoothing: Fraction = 0.1
    mixup: NonNegativeNumber = 0.0
    """Mixup alpha (0 = off)."""
    cutmix: NonNegativeNumber = 0.0
    """CutMix alpha (0 = off)."""
    mix_prob: Probability = 1.0
    ema: bool = False
    ema_decay: Annotated[float, Range(0.0, 1.0, min_open=True, max_open=True)] = 0.9998
    grad_clip: NonNegativeNumber = 0.0
    """Clip the global grad norm to this value (0 = off)."""
    grad_accum: PositiveInt = 1
    """Micro-batches per optimizer step; the global batch is split across them (so it must divide batch_size)."""
    max_steps: NonNegativeInt = 0
    """Stop after this many optimizer steps (0 = run all epochs); for smoke tests and benchmarks."""
    eval_every_epochs: PositiveInt = 1


@dataclass(frozen=True)
class CompileConfig:
    mode: Literal["auto", "off", "default", "max-autotune"] = "auto"
    """"auto": torch.compile's default mode on CUDA, off on CPU (where compiling costs minutes per graph);
    "off", "default" and "max-autotune" (longer autotuning for faster kernels) apply everywhere."""


@dataclass(frozen=True)
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """"auto": NCCL on GPU, gloo on CPU."""
    timeout_s: PositiveInt = 1800


@dataclass(frozen=True)
class LogConfig:
    every_steps: PositiveInt = 50
    """Host sync, metrics.jsonl line and TensorBoard scalars every this many steps."""
    tensorboard: bool = True
    progress: bool = True
    """tqdm bar per epoch on rank 0."""


@dataclass(frozen=True)
class CkptConfig:
    every_epochs: NonNegativeInt = 1
    every_steps: NonNegativeInt = 0
    """Also save every this many optimizer steps (0 = off)."""
    keep: PositiveInt = 3
    """How many of the latest checkpoints to keep."""


@dataclass(frozen=True)
class EvalConfig:
    tta: Literal["none", "flip"] = "none"
    """Test-time augmentation of val/test evaluation: "flip" averages the logits of each image and its mirror."""


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
    eval: EvalConfig = EvalConfig()


def _section_types() -> dict[str, type]:
    return typing.get_type_hints(Config)


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
        if sections[name] is ModelConfig:
            built[name] = ModelConfig.from_table(values, where)
        else:
            built[name] = build_dataclass(sections[name], values, where, f"[{name}]")
    return Config(**built)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain data, tuples as lists (what TOML and JSON hold)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    def table(section: Any) -> dict[str, Any]:
        if isinstance(section, ModelConfig):
            return section.to_table()
        return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}

    return {sec.name: {k: plain(v) for k, v in table(getattr(cfg, sec.name)).items()} for sec in dataclasses.fields(cfg)}


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
    """Rules between fields (each field's own type and range are checked when it is read); never mutates the config."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: [{key.split('.')[0]}] {key.split('.', 1)[1]} {msg}")

    d, t, o, s = cfg.data, cfg.train, cfg.optim, cfg.sched
    need(d.crop_scale[0] <= d.crop_scale[1], "data.crop_scale", f"must be [min, max] with min <= max, got {list(d.crop_scale)}")
    need(d.crop_ratio[0] <= d.crop_ratio[1], "data.crop_ratio", f"must be [min, max] with min <= max, got {list(d.crop_ratio)}")
    need(len(d.mean) in (0, 3), "data.mean", f"must be a list of 3 numbers (R, G, B) or empty (from the data), got {list(d.mean)}")
    need(len(d.std) in (0, 3), "data.std", f"must be a list of 3 numbers (R, G, B) or empty (from the data), got {list(d.std)}")
    need(d.val_source == "carve" or d.source == "imagefolder", "data.val_source",
         f'"{d.val_source}" is for ImageFolder trees; {d.source} keeps the study\'s rule (val_source = "carve": val held '
         f"out of train/, the labelled val/ is the test split)")
    from fasttrain.data.pipelines.augment import validate_augmentation  # its modes and rules; torch-free

    validate_augmentation(d, t.epochs, cfg.model.name, need)
    need(t.batch_size % t.grad_accum == 0, "train.grad_accum", f"({t.grad_accum}) must divide train.batch_size ({t.batch_size})")
    need(not (o.nesterov and o.name != "sgd"), "optim.nesterov", "applies to optim.name = \"sgd\" only")
    need(s.warmup_epochs < t.epochs or s.warmup_epochs == 0, "sched.warmup_epochs", f"({s.warmup_epochs}) must be shorter than train.epochs ({t.epochs})")
    need(list(s.milestones) == sorted(set(s.milestones)), "sched.milestones", f"must be increasing, got {list(s.milestones)}")
    need(s.name != "step" or len(s.milestones) > 0, "sched.milestones", "must list at least one epoch when sched.name = \"step\"")


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
