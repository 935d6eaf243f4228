"""How the model runs here: built from [model], precision (`train.amp`), TF32/cuDNN switches, the compile
choice, and the training forward in the fixed order channels_last → torch.compile → DDP."""

from __future__ import annotations

import os

import torch

from fasttrain.config import Config, TrainConfig
from fasttrain.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---- the configured model ----
def model_knobs_for(cfg: Config) -> dict:
    """The knobs the user set; a model that takes `img_size` gets data.image_size unless set."""
    from fasttrain.models import model_knobs

    knobs = cfg.model.knobs()
    if "img_size" in model_knobs(cfg.model.name) and "img_size" not in knobs:
        knobs["img_size"] = cfg.data.image_size
    return knobs


def build_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    from fasttrain.models import create_model

    return create_model(cfg.model.name, num_classes=num_classes, **model_knobs_for(cfg))


def check_model_config(cfg: Config, num_classes: int = 2) -> None:
    """Build the configured model on the meta device and pass one batch of the data's image size through it.

    Names, knobs, knob values and shapes the knobs make impossible (e.g. zero channels) are caught before any
    data work or memory use (~0.1 s even for ResNet-50).
    """
    size = cfg.data.image_size
    with torch.device("meta"):
        model = build_model(cfg, num_classes)
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, 3, size, size, device="meta"))
    except UserError:
        raise
    except Exception as err:
        knobs = ", ".join(f"{k}={v!r}" for k, v in cfg.model.knobs().items()) or "default knobs"
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(
            f"model {cfg.model.name} ({knobs}) fails on {size}×{size} images: {type(err).__name__}: {first}; "
            f"change its [model] knobs"
        ) from None


# ---- numerics ----
def resolve_amp(requested: str, device: torch.device) -> str:
    """"auto": bf16 on GPUs that have it, else fp16; on a CPU fp32 ("off") unless a measurement says otherwise
    (the trainer measures its model with measure_cpu_amp: CPU flags cannot tell whether bf16 is faster)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "off"


def measure_cpu_amp(model: torch.nn.Module, *, batch: int, image_size: int, num_classes: int, channels_last: bool,
                    budget_s: float = 1.5) -> dict[str, float]:
    """Training images/s of `model` on the CPU in fp32 ("off") and under bf16 autocast ("bf16"): forward, loss and
    backward of a copy of it at the training batch, after one warm-up step each, alternating the two so both see the
    same machine load; medians of 2 to 20 steps each (1 when a warm-up pair alone outlasts `budget_s`), stopping
    once `budget_s` has passed.
    The model, its gradients and the run's random streams are left as they were."""
    import copy
    import statistics
    import time

    import torch.nn.functional as F

    probe = copy.deepcopy(model).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    cpu = torch.device("cpu")

    def step(amp: str) -> float:
        start = time.perf_counter()
        with autocast(amp, cpu):
            logits = probe(images)
        F.cross_entropy(logits.float(), labels).backward()
        probe.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    seconds: dict[str, list[float]] = {"off": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):  # dropout draws here leave the run's random stream as it was
        warm_up = sum(step(amp) for amp in seconds)  # oneDNN primitives, allocator
        least = 1 if warm_up > budget_s else 2  # a model this slow on the CPU gets one timed step each
        start = time.perf_counter()
        while True:
            for amp in seconds:
                seconds[amp].append(step(amp))
            done = len(seconds["off"])
            if done >= 20 or (done >= least and time.perf_counter() - start >= budget_s):
                break
    return {amp: batch / statistics.median(times) for amp, times in seconds.items()}


def choose_cpu_amp(images_per_s: dict[str, float]) -> tuple[str, str]:
    """(amp, the line that says why) from measure_cpu_amp's figures: the faster precision."""
    amp = "bf16" if images_per_s["bf16"] > images_per_s["off"] else "off"
    ratio = images_per_s["bf16"] / images_per_s["off"]
    return amp, (f"train.amp auto on this CPU, measured on the model at its batch: fp32 {images_per_s['off']:.0f} "
                 f"images/s, bf16 {images_per_s['bf16']:.0f} images/s ({ratio:.2f}x) → "
                 f"{'bf16' if amp == 'bf16' else 'fp32 (amp off)'}")


def autocast(amp: str, device: torch.device):
    """The autocast context of a resolved amp setting ("bf16", "fp16" or "off")."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp != "off")


def configure_backends(train: TrainConfig, device: torch.device) -> str | None:
    """TF32, cuDNN autotuning and deterministic algorithms as [train] asks; benchmarks call it too, so both
    sides of a comparison run under the same settings. Returns the one line a deterministic CUDA run logs: what
    it cannot guarantee (None elsewhere: on CPU the same seed gives the same losses bit for bit)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = train.tf32
        torch.backends.cudnn.allow_tf32 = train.tf32
        torch.backends.cudnn.benchmark = not train.deterministic
    if not train.deterministic:
        return None
    if device.type == "cuda":
        # cuBLAS sizes its workspace once, when its handle is made at the process's first matmul: this runs before
        # the model computes anything (a user's own value is kept)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # strict on CPU; on CUDA some backward kernels (adaptive average pooling's, index_add's) have no deterministic
    # version, and strict mode would refuse to train the ResNets at all: those warn instead
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if device.type != "cuda":
        return None
    return (f"train.deterministic on CUDA: cuBLAS workspace fixed (CUBLAS_WORKSPACE_CONFIG="
            f"{os.environ['CUBLAS_WORKSPACE_CONFIG']}), deterministic cuDNN, no autotuning; ops without a deterministic "
            "CUDA kernel only warn (torch's warn_only), so bit-identical repeats are not guaranteed where one warns")


# ---- compilation and the training forward ----
def resolve_compile(requested: str, device: torch.device) -> tuple[str, str]:
    """(mode, why): mode is "off", "default" or "max-autotune"; `why` is the line the trainer logs."""
    if requested != "auto":
        return requested, f"compile.mode = {requested!r}"
    if torch.device(device).type == "cuda":
        return "default", "compile.mode auto: compiled on CUDA (torch.compile's default mode)"
    return "off", ("compile.mode auto: off on CPU (compiling takes minutes per graph there; "
                   "set compile.mode = \"default\" to compile anyway)")


def compile_kwargs(mode: str) -> dict:
    """torch.compile's arguments for a resolved mode other than "off".

    Static shapes: without `dynamic=False` the second image size of progressive resizing turns the graph
    dynamic for the rest of the run; one static graph per size (a few sizes) runs faster kernels.
    """
    return {"dynamic": False} if mode == "default" else {"mode": mode, "dynamic": False}


def training_forward(model: torch.nn.Module, cfg: Config, info) -> torch.nn.Module:
    """The module the training step calls, in the fixed order channels_last → torch.compile → DDP.

    `model` (already on the device) stays the plain module that checkpoints and evaluation use; this is the
    one place compile is set up (cfg.compile).
    """
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = model
    mode, _ = resolve_compile(cfg.compile.mode, info.device)
    if mode != "off":
        forward = torch.compile(model, **compile_kwargs(mode))
    if info.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    return forward
