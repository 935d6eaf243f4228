"""Training metrics: the metrics object (epoch/window sums, data-wait and throughput timing, memory, skipped steps),
MFU against datasheet peaks, and what a run shows as it goes (metrics.jsonl, TensorBoard, the progress bar)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from fasttrain.atomic import atomic_write_text
from fasttrain.engine.distributed import DistInfo, all_reduce_sum
from fasttrain.rundir import RunDir


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TrainMetrics:
    """This process's training metrics, in the manner of torchtitan's MetricsProcessor.

    Step sums stay on the device and are reduced across ranks on log steps and at epoch end only (no host
    sync in between). The epoch and window sums, the skipped-step count, the wall clock and the timed images and
    seconds are checkpointed (state_dict), so a run resumed mid-epoch writes the same epoch record and its images/s
    covers every process of the run. Each process's first log window (compilation, warm-up) is left out of
    images/s, unless the run has no other timed span (a short run: then every trained image counts).
    """

    def __init__(self, info: DistInfo, *, flops_per_image: float | None = None, peak_tflops: float | None = None):
        self.info, self.device = info, info.device
        self.flops_per_image, self.peak_tflops = flops_per_image, peak_tflops
        self.epoch_sums, self.window_sums = self._new_sums(), self._new_sums()
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self.elapsed_before = 0.0
        self.run_start = time.perf_counter()
        self.window_start, self.window_images, self.data_wait_s = self.run_start, 0, 0.0
        self.images_timed, self.time_timed, self.windows_logged = 0, 0.0, 0
        self.images_all, self.time_all = 0, 0.0  # every timed span, warm-up included: a short run's images/s

    def _new_sums(self) -> dict[str, Any]:
        """Loss, correct, image and step sums of this rank over an epoch or a log window."""
        return {"loss": torch.zeros((), device=self.device),
                "correct": torch.zeros((), dtype=torch.int64, device=self.device), "images": 0, "steps": 0}

    # ---- clocks ----
    def start_run(self) -> None:
        self.run_start = time.perf_counter()

    def wall_time_s(self) -> float:
        """Training wall time of the whole run, earlier attempts included."""
        return self.elapsed_before + time.perf_counter() - self.run_start

    def start_epoch(self, *, fresh: bool) -> None:
        """A fresh epoch clears the sums; a resumed one keeps the checkpointed ones. Timing restarts either way."""
        if fresh:
            self.epoch_sums, self.window_sums = self._new_sums(), self._new_sums()
        self.start_window()

    def start_window(self) -> None:
        self.window_start, self.window_images, self.data_wait_s = time.perf_counter(), 0, 0.0

    @contextlib.contextmanager
    def waiting_for_data(self) -> Iterator[None]:
        """Time spent getting the next batch from the pipeline."""
        start = time.perf_counter()
        yield
        self.data_wait_s += time.perf_counter() - start

    # ---- per step (device tensors only) ----
    def add_step(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        for sums in (self.epoch_sums, self.window_sums):
            sums["loss"] += loss
            sums["correct"] += correct
            sums["images"] += images
            sums["steps"] += 1
        self.window_images += images

    def count_skipped(self, skipped: torch.Tensor) -> None:
        """Add a 0-d bool/int device tensor: 1 when the step's update was skipped (fp16 overflow)."""
        self.skipped_steps += skipped.to(torch.int64)

    # ---- reductions (host sync) ----
    def _reduced(self, sums: dict[str, Any]) -> tuple[float, float]:
        stats = torch.stack([sums["loss"].float(), sums["correct"].float()]).to(torch.float64)
        all_reduce_sum(stats, self.info)
        loss, correct = stats[0].item(), stats[1].item()
        world = self.info.world_size
        return loss / max(1, sums["steps"] * world), correct / max(1, sums["images"] * world)

    def close_window(self) -> dict[str, Any]:
        """The log window's loss, top-1 (its sums may start before a resume), images/s, data wait, memory, MFU.

        On CUDA the device is synchronized first, so the window's time holds all its GPU work and the
        data-wait share is not inflated by kernels still queued (log steps only)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        loss, top1 = self._reduced(self.window_sums)
        elapsed = time.perf_counter() - self.window_start
        images = self.window_images * self.info.world_size
        ips = images / elapsed if elapsed > 0 else 0.0
        self._count_span(images, elapsed)
        values = {"loss": loss, "top1": top1, "images_per_s": ips,
                  "data_wait_pct": 100.0 * self.data_wait_s / elapsed if elapsed > 0 else 0.0,
                  "peak_mem_mb": peak_memory_mb(self.device)}
        if self.flops_per_image and self.peak_tflops:
            values["mfu_pct"] = mfu_pct(self.flops_per_image, ips, self.peak_tflops, devices=self.info.world_size)
        self.window_sums = self._new_sums()
        return values

    def _count_span(self, images: int, elapsed: float) -> None:
        """Add a closed span of training (a log window, or an epoch's tail after its last log step) to the timings."""
        if self.windows_logged > 0:  # a process's first span holds compilation and warm-up: not in images_timed
            self.images_timed += images
            self.time_timed += elapsed
        self.images_all += images
        self.time_all += elapsed
        self.windows_logged += 1

    def close_epoch(self) -> dict[str, float]:
        """The epoch's train loss and top-1; the steps since the last log step are timed too (the reduction syncs)."""
        loss, top1 = self._reduced(self.epoch_sums)
        self.time_tail()
        return {"train_loss": loss, "train_top1": top1}

    def time_tail(self) -> None:
        """Count the steps since the last log step in the run's timings (at an epoch's end or a max_steps stop)."""
        if not self.window_images:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._count_span(self.window_images * self.info.world_size, time.perf_counter() - self.window_start)
        self.window_images = 0

    def epoch_loss_sum(self) -> float:
        """The epoch's loss sum over all ranks so far (a finite check before a mid-epoch checkpoint)."""
        total = self.epoch_sums["loss"].detach().clone()
        all_reduce_sum(total, self.info)
        return total.item()

    def images_per_s(self) -> float | None:
        """Training images/s of the whole run (all its processes), each process's first span left out when
        there is more; None before any span was timed."""
        if self.time_timed > 0:
            return self.images_timed / self.time_timed
        return self.images_all / self.time_all if self.time_all > 0 else None

    def skipped(self) -> int:
        return int(self.skipped_steps.item())

    # ---- checkpoint ----
    def state_dict(self) -> dict[str, Any]:
        def plain(sums):
            return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in sums.items()}

        return {"epoch": plain(self.epoch_sums), "window": plain(self.window_sums),
                "skipped_steps": self.skipped_steps.detach().cpu().clone(), "elapsed_s": self.wall_time_s(),
                "timed": {"images": self.images_timed, "seconds": self.time_timed,
                          "images_all": self.images_all, "seconds_all": self.time_all}}

    def load_state_dict(self, state: dict[str, Any], *, sums: bool = True) -> None:
        """`sums=False` (another world size) keeps only the wall clock and the skipped-step count."""
        def on_device(saved):
            return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in saved.items()}

        self.elapsed_before = float(state["elapsed_s"])
        self.run_start = time.perf_counter()
        self.skipped_steps = state["skipped_steps"].to(self.device)
        timed = state.get("timed", {})  # checkpoints of earlier versions timed only their own process
        self.images_timed, self.time_timed = timed.get("images", 0), timed.get("seconds", 0.0)
        self.images_all, self.time_all = timed.get("images_all", 0), timed.get("seconds_all", 0.0)
        if sums:
            self.epoch_sums, self.window_sums = on_device(state["epoch"]), on_device(state["window"])


def mfu_inputs(cfg, device: torch.device, num_classes: int, log) -> dict[str, float]:
    """TrainMetrics' FLOPs per training image and datasheet peak: on CUDA only; an unknown GPU is said once."""
    if device.type != "cuda":
        return {}
    peak, name = device_peak_tflops(device)
    if peak is None:
        log(f"mfu: no datasheet bf16 peak for '{name}' (fasttrain.engine.metrics); mfu_pct is not logged")
        return {}
    from fasttrain.engine.runtime import model_knobs_for
    from fasttrain.models.counting import train_flops_per_image

    flops = train_flops_per_image(cfg.model.name, model_knobs_for(cfg), num_classes=num_classes,
                                  image_size=cfg.data.image_size)
    log(f"mfu: {flops / 1e9:.3f} GFLOP per training image against {name}'s dense bf16 peak {peak:.0f} TFLOP/s")
    return {"flops_per_image": flops, "peak_tflops": peak}


# ---- datasheet peaks and MFU ----
# Dense (no sparsity) bf16 tensor-core TFLOP/s with fp32 accumulation, from the vendors' datasheets.
# Checked in order: a longer name comes before a name it contains ("H200 NVL" before "H200", "H100 PCIe" before "H100",
# "L40S" before "L40" before "L4"); a test checks the order.
DATASHEET_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),   # 1,671 with sparsity (H200 datasheet, NVL column)
    ("H200", 989.0),       # H200 SXM
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),       # H100 SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
)


def datasheet_peak_tflops(gpu_name: str) -> float | None:
    """Dense bf16 peak of a GPU named like torch.cuda.get_device_name (e.g. "NVIDIA H100 80GB HBM3"); None if unknown."""
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if key.lower() in gpu_name.lower():
            return tflops
    return None


def device_peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """(dense bf16 peak of `device` or None, the device's name); CPUs have no datasheet peak here."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, device.type
    name = torch.cuda.get_device_name(device)
    return datasheet_peak_tflops(name), name


def mfu_pct(flops_per_image: float, images_per_s: float, peak_tflops: float, *, devices: int = 1) -> float:
    """Model FLOPs utilization in percent: achieved FLOP/s over `devices` × the peak."""
    return 100.0 * flops_per_image * images_per_s / (peak_tflops * 1e12 * devices)


# ---- what a run shows: metrics.jsonl, TensorBoard, the progress bar (rank 0 only) ----
def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


class MetricsWriter:
    """Appends one JSON line per logged step and per epoch; mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, resume_step: int | None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = RunDir(run_dir).metrics
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Steps up to resume_step were logged by the attempt that wrote the checkpoint and are not logged again:
            # TensorBoard drops only the later ones that the resumed run will log anew.
            self._tb = SummaryWriter(str(RunDir(run_dir).tensorboard),
                                     purge_step=resume_step + 1 if resume_step is not None else None)

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint we resume from: they will be logged again, identically."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, kind: str, step: int, values: dict[str, Any], tb_prefix: str | None = None) -> None:
        rec = {"kind": kind, "step": step, **{k: _finite_or_none(v) for k, v in values.items()}}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None and tb_prefix is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self._tb.add_scalar(f"{tb_prefix}/{k}", v, step)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self._tb is not None:
            self._tb.close()


@contextlib.contextmanager
def progress_bar(enabled: bool, *, total: int, initial: int, desc: str):
    """A tqdm bar of one epoch's steps, or None when disabled (other ranks, log.progress = false)."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:  # also when Ctrl-C or an error ends the epoch: the line after it starts on a clean row
        bar.close()
