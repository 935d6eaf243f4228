"""The training metrics object: epoch/window sums, data-wait and throughput timing, memory, skipped steps, MFU."""

from __future__ import annotations

import contextlib
import resource
import time
from typing import Any, Iterator

import torch

from fasttrain.engine.distributed import DistInfo, all_reduce_sum
from fasttrain.engine.hardware import mfu_pct


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TrainMetrics:
    """This process's training metrics, in the manner of torchtitan's MetricsProcessor.

    Step sums stay on the device and are reduced across ranks on log steps and at epoch end only (no host
    sync in between). The epoch and window sums, the skipped-step count and the wall clock are checkpointed
    (state_dict), so a run resumed mid-epoch writes the same epoch record; timings cover this process only,
    and its first log window (compilation, warm-up) is left out of the run's images/s.
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
        if self.windows_logged > 0:  # a process's first window holds compilation and warm-up: not counted
            self.images_timed += images
            self.time_timed += elapsed
        self.windows_logged += 1
        values = {"loss": loss, "top1": top1, "images_per_s": ips,
                  "data_wait_pct": 100.0 * self.data_wait_s / elapsed if elapsed > 0 else 0.0,
                  "peak_mem_mb": peak_memory_mb(self.device)}
        if self.flops_per_image and self.peak_tflops:
            values["mfu_pct"] = mfu_pct(self.flops_per_image, ips, self.peak_tflops, devices=self.info.world_size)
        self.window_sums = self._new_sums()
        return values

    def close_epoch(self) -> dict[str, float]:
        loss, top1 = self._reduced(self.epoch_sums)
        return {"train_loss": loss, "train_top1": top1}

    def epoch_loss_sum(self) -> float:
        """The epoch's loss sum over all ranks so far (a finite check before a mid-epoch checkpoint)."""
        total = self.epoch_sums["loss"].detach().clone()
        all_reduce_sum(total, self.info)
        return total.item()

    def images_per_s(self) -> float | None:
        """Images/s of the run in this process, first window left out; None before a second log window."""
        return self.images_timed / self.time_timed if self.time_timed > 0 else None

    def skipped(self) -> int:
        return int(self.skipped_steps.item())

    # ---- checkpoint ----
    def state_dict(self) -> dict[str, Any]:
        def plain(sums):
            return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in sums.items()}

        return {"epoch": plain(self.epoch_sums), "window": plain(self.window_sums),
                "skipped_steps": self.skipped_steps.detach().cpu().clone(), "elapsed_s": self.wall_time_s()}

    def load_state_dict(self, state: dict[str, Any], *, sums: bool = True) -> None:
        """`sums=False` (another world size) keeps only the wall clock and the skipped-step count."""
        def on_device(saved):
            return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in saved.items()}

        self.elapsed_before = float(state["elapsed_s"])
        self.run_start = time.perf_counter()
        self.skipped_steps = state["skipped_steps"].to(self.device)
        if sums:
            self.epoch_sums, self.window_sums = on_device(state["epoch"]), on_device(state["window"])


def mfu_inputs(cfg, device: torch.device, num_classes: int, log) -> dict[str, float]:
    """TrainMetrics' FLOPs per training image and datasheet peak: on CUDA only; an unknown GPU is said once."""
    from fasttrain.engine.hardware import device_peak_tflops

    if device.type != "cuda":
        return {}
    peak, name = device_peak_tflops(device)
    if peak is None:
        log(f"mfu: no datasheet bf16 peak for '{name}' (fasttrain.engine.hardware); mfu_pct is not logged")
        return {}
    from fasttrain.engine.model_setup import model_knobs_for
    from fasttrain.models.counting import train_flops_per_image

    flops = train_flops_per_image(cfg.model.name, model_knobs_for(cfg), num_classes=num_classes,
                                  image_size=cfg.data.image_size)
    log(f"mfu: {flops / 1e9:.3f} GFLOP per training image against {name}'s dense bf16 peak {peak:.0f} TFLOP/s")
    return {"flops_per_image": flops, "peak_tflops": peak}
