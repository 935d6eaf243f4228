"""Prepare benchmark: decode throughput (1 worker vs all cores) and peak memory of building the cache.

Builds a synthetic JPEG tree in the Tiny-ImageNet layout (20,000 decoded images by default,
2,000 with --quick, any count with --images), then runs `python -m fasttrain.data prepare` as a
subprocess once with one worker and once with every core. While each runs, the resident memory
of its whole process tree (parent + pool workers) is sampled from /proc and the peak of the sum
is reported, split into anonymous memory (what counts against the 1.5 GB goal) and file-backed
pages (shared libraries, page cache of mapped files).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fasttrain.data.prepare import default_workers
from fasttrain.data.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[2]
DEVICES = ("cpu",)  # decoding runs on CPU cores only
_SAMPLE_SECONDS = 0.1  # one sample costs ~4 ms of CPU; more often would slow what is measured


def add_arguments(parser) -> None:
    group = parser.add_argument_group("prepare suite")
    group.add_argument("--images", type=int, default=None,
                       help="decoded images in the tree (train + val); default 20000, 2000 with --quick")
    group.add_argument("--size", type=int, default=64, help="image side of tree and cache (default 64)")
    group.add_argument("--workdir", type=Path, default=None,
                       help="where to put the tree and caches (default: a temporary directory, removed after)")


def _tree_shape(images: int) -> dict:
    """Tiny-ImageNet proportions: 200 classes (fewer for small counts), 10 train : 1 val per class."""
    classes = max(2, min(200, images // 50))
    per_class_total = max(3, images // classes)
    val_per_class = max(1, round(per_class_total / 11))
    return {"classes": classes, "per_class": per_class_total - val_per_class, "val_per_class": val_per_class}


def _scan_processes() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, user+system CPU clock ticks)} of every process in /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state, ppid, ..., utime and stime are the 12th and 13th fields
        found[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def _descendants(processes: dict[int, tuple[int, int]], root_pid: int) -> list[int]:
    """root_pid and every live descendant (pool workers, the forkserver and its children)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    tree, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def _memory_kib(pid: int) -> dict[str, int]:
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


class _TreeSampler(threading.Thread):
    """Samples a process tree until stopped: peaks of its summed RSS (MiB) and the CPU time of every member.

    Pool workers are children of the forkserver, not of prepare, so wait4's rusage misses them;
    the CPU time is read from /proc instead (a process's last sample, so up to one interval is lost).
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = {"rss_total_mib": 0.0, "rss_anon_mib": 0.0, "rss_file_mib": 0.0, "processes": 0}
        self.cpu_ticks: dict[int, int] = {}
        self.stopped = threading.Event()

    def cpu_seconds(self) -> float:
        return sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stopped.is_set():
            totals = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0}
            processes = _scan_processes()
            pids = _descendants(processes, self.pid)
            for pid in pids:
                if pid in processes:
                    self.cpu_ticks[pid] = max(self.cpu_ticks.get(pid, 0), processes[pid][1])
                for key, value in _memory_kib(pid).items():
                    totals[key] += value
            self.peak["rss_total_mib"] = max(self.peak["rss_total_mib"], totals["VmRSS"] / 1024)
            self.peak["rss_anon_mib"] = max(self.peak["rss_anon_mib"], (totals["RssAnon"] + totals["RssShmem"]) / 1024)
            self.peak["rss_file_mib"] = max(self.peak["rss_file_mib"], totals["RssFile"] / 1024)
            self.peak["processes"] = max(self.peak["processes"], len(pids))
            self.stopped.wait(_SAMPLE_SECONDS)


def _prepare_once(tree: Path, cache_dir: Path, workers: int, size: int) -> dict:
    command = [sys.executable, "-m", "fasttrain.data", "prepare", "--source", "tiny-imagenet", "--root", str(tree),
               "--cache-dir", str(cache_dir), "--workers", str(workers), "--image-size", str(size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log_path = cache_dir.with_name(cache_dir.name + ".log")
    with open(log_path, "w") as log:
        started = time.perf_counter()
        # output goes to a file, not a pipe: nobody reads a pipe while wait4 blocks
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's rusage: its own peak RSS
        wall = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
    returncode = os.waitstatus_to_exitcode(status)
    proc.returncode = returncode
    if returncode != 0:
        raise RuntimeError(f"prepare failed ({returncode}): {log_path.read_text().strip()[-2000:]}")
    build = json.loads((cache_dir / "meta.json").read_text())["build"]
    images = build["images"]
    # the prepare process itself is reaped: its exact CPU time comes from wait4
    sampler.cpu_ticks[proc.pid] = 0
    cpu_seconds = sampler.cpu_seconds() + usage.ru_utime + usage.ru_stime
    return {
        "workers": workers,
        "images": images,
        "wall_seconds": round(wall, 3),
        "images_per_s_end_to_end": round(images / wall, 1),
        "images_per_s_build": round(images / build["seconds"], 1),
        "images_per_s_decode": round(images / build["decode_seconds"], 1),
        **{key: round(value, 1) if isinstance(value, float) else value for key, value in sampler.peak.items()},
        "largest_process_maxrss_mib": round(usage.ru_maxrss / 1024, 1),
        # CPU time of prepare and all its workers: a throughput measure that other load on the machine
        # does not skew (images/s on N idle cores is at most N times this)
        "cpu_seconds": round(cpu_seconds, 2),
        "images_per_cpu_second": round(images / cpu_seconds, 1),
    }


def run(args) -> dict:
    images = args.images or (2000 if args.quick else 20000)
    shape = _tree_shape(images)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kernels_bench_prepare_"))
    cleanup = args.workdir is None
    try:
        tree = workdir / f"synthetic_{images}_{args.size}"
        started = time.perf_counter()
        write_synthetic(tree, size=args.size, seed=0, workers=default_workers(), **shape)
        generate_seconds = time.perf_counter() - started
        print(f"synthetic tree {tree}: {shape} ({generate_seconds:.1f} s)", file=sys.stderr)
        all_cores = default_workers()
        runs = []
        for workers in sorted({1, all_cores}):
            cache_dir = workdir / f"cache_w{workers}"
            shutil.rmtree(cache_dir, ignore_errors=True)
            runs.append(_prepare_once(tree, cache_dir, workers, args.size))
            print(f"workers={workers}: {runs[-1]}", file=sys.stderr)
        output_mib = runs[0]["images"] * args.size * args.size * 3 / 2**20
        result = {
            "tree": {**shape, "decoded_images": runs[0]["images"], "image_size": args.size,
                     "generate_seconds": round(generate_seconds, 1)},
            "output_mib": round(output_mib, 1),
            "runs": runs,
            "speedup_all_cores": round(runs[-1]["images_per_s_build"] / runs[0]["images_per_s_build"], 2),
            "parallel_cpu_efficiency": round(runs[-1]["images_per_cpu_second"] / runs[0]["images_per_cpu_second"], 2),
            "peak_anon_mib_all_cores": runs[-1]["rss_anon_mib"],
            "goal": "throughput scales with cores; anonymous RSS of the tree < 1.5 GB at 100,000 images of 64x64",
            "memory_note": ("workers pwrite decoded rows into the .npy files and checksums are read in 8 MiB "
                            "chunks, so no process maps the output; anonymous memory grows with the file "
                            "listing only (paths, labels: ~200 bytes per image). "
                            "largest_process_maxrss_mib is the subprocess's own peak from wait4; it also counts "
                            "the benchmark process's pages shared before exec, so it overstates prepare"),
        }
        return result
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)


def to_markdown(result: dict) -> str:
    figures = result["result"]
    tree = figures["tree"]
    lines = [f"prepare benchmark: {tree['decoded_images']} images of {tree['image_size']}x{tree['image_size']} "
             f"({tree['classes']} classes), output {figures['output_mib']} MiB, "
             f"{result['environment']['cpu_cores']} cores", "",
             "| workers | img/s end-to-end | img/s build | img/s decode | peak RSS tree (MiB) | peak anon (MiB) "
             "| processes |", "|---|---|---|---|---|---|---|"]
    for run_ in figures["runs"]:
        lines.append(f"| {run_['workers']} | {run_['images_per_s_end_to_end']} | {run_['images_per_s_build']} | "
                     f"{run_['images_per_s_decode']} | {run_['rss_total_mib']} | {run_['rss_anon_mib']} | "
                     f"{run_['processes']} |")
    lines += ["", f"speedup with all cores: {figures['speedup_all_cores']}x (load average at start "
              f"{result['environment']['load_average_1m_at_start']}); images per CPU-second with all cores vs one: "
              f"{figures['parallel_cpu_efficiency']}x"]
    return "\n".join(lines) + "\n"
