"""Faults a long run must survive: kill -9, a kill or a full disk while a checkpoint or the cache is written,
an elastic restart under torchrun, and damaged caches and checkpoints — nothing lost, every error one line."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fasttrain.atomic
from fasttrain.data.cache import CacheError, open_cache
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.rundir import RunDir
from tiny_runs import (ROOT, STEPS_PER_EPOCH, FailingWrites, epoch_records, final_weights, logged_steps,
                       run_cli, run_in_process, same_weights, snapshot, step_records, subprocess_env, tiny_args,
                       tiny_cache_dir, wait_for)

TESTS = Path(__file__).resolve().parent
# Every resumable run here is the same 3-epoch run with a checkpoint every 3 steps (24 steps in all).
RUN = ("train.epochs=3", "ckpt.every_steps=3", "ckpt.keep=10")
TOTAL_STEPS = 3 * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fault_data") / "synthetic"


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_in_process(tiny_args(data_root, out, *RUN), check=True)
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    """Per-step and per-epoch logs, final weights and test accuracy equal to the uninterrupted run's."""
    assert step_records(run) == step_records(reference)
    assert [r["step"] for r in step_records(run)] == list(range(1, TOTAL_STEPS + 1))
    assert epoch_records(run) == epoch_records(reference)
    assert same_weights(final_weights(run), final_weights(reference))
    got, want = (json.loads(RunDir(d).results.read_text()) for d in (run, reference))
    assert (got["steps"], got["test_top1"], got["test_top5"]) == (want["steps"], want["test_top1"], want["test_top5"])


def leftover_temp_files(run: Path) -> list[Path]:
    return sorted(run.rglob("*.tmp"))


def hooked_fasttrain(hook: str, args: list[str]) -> list[str]:
    """`python -m fasttrain args` with `hook` (Python code) run first in the same interpreter."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n{hook}\n"
            "from fasttrain.__main__ import main\nfrom fasttrain.errors import run_cli\n"
            "raise SystemExit(run_cli(lambda: main(sys.argv[1:])))")
    return [sys.executable, "-c", code, *args]


# --- kill -9 -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_mid_run_then_resume_auto_equals_uninterrupted_run(data_root, reference, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, *RUN)
    kill_after = random.Random().randint(4, TOTAL_STEPS - 4)  # a random step past the first checkpoint
    print(f"killing once step {kill_after} is logged")
    with open(tmp_path / "first_attempt.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fasttrain", *args], cwd=ROOT, env=subprocess_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: ckpt_io.list_checkpoints(RunDir(run).checkpoints) and logged_steps(run) >= kill_after,
                     timeout=300, proc=proc)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not RunDir(run).results.exists(), "the run finished before it could be killed"
    newest = ckpt_io.list_checkpoints(RunDir(run).checkpoints)[-1]

    resumed = run_in_process(args + ["--resume", "auto"], check=True)
    assert f"resume: {newest}" in resumed.stdout
    assert_same_run(run, reference)
    assert not leftover_temp_files(run)


# --- a second writer, Ctrl-C -------------------------------------------------------------------------

# Each step of the first process sleeps a little (its numbers are unchanged): it is still running when the test acts.
SLOW_STEPS = ("import time, fasttrain.engine.trainer as trainer\n"
              "real_step = trainer.Trainer.train_step\n"
              "def slow_step(self, *args, **kwargs):\n"
              "    time.sleep(0.2)\n"
              "    return real_step(self, *args, **kwargs)\n"
              "trainer.Trainer.train_step = slow_step")


def test_second_writer_is_refused_naming_the_holder_and_kill_9_leaves_no_stale_lock(data_root, reference, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, *RUN)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(hooked_fasttrain(SLOW_STEPS, args), cwd=ROOT, env=subprocess_env(), stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ckpt_io.list_checkpoints(RunDir(run).checkpoints) and logged_steps(run) >= 4,
                 timeout=300, proc=first)
        first.send_signal(signal.SIGSTOP)  # frozen mid-run: whatever changes in the run directory now, another did it
        before = snapshot(run)
        for extra in ([], ["--resume", "auto"]):  # a plain start, and the "continue it" a user would try next
            second = run_cli(args + extra, check=False, timeout=300)
            assert second.returncode == 2, second.stdout + second.stderr
            line = second.stderr.strip()
            assert "\n" not in line and line.startswith("error: "), second.stderr
            assert f"is in use by another training (pid {first.pid} on {socket.gethostname()} since " in line, line
            assert "--resume auto" not in line  # the run is not to be continued while it runs
            assert snapshot(run) == before, "a refused writer touched the run directory"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.wait()
    assert not RunDir(run).results.exists(), "the first run finished before the test could act"

    resumed = run_in_process(args + ["--resume", "auto"], check=True)  # the kernel released the dead holder's lock
    assert "resume: " in resumed.stdout
    assert_same_run(run, reference)


@pytest.mark.slow
@pytest.mark.dist
def test_under_torchrun_the_lock_is_rank_0s_and_every_rank_stops_when_it_is_held(data_root, tmp_path):
    run = tmp_path / "run"
    hold = ("import sys\nfrom fasttrain.atomic import exclusive_lock_or_fail\n"
            "with exclusive_lock_or_fail(sys.argv[1], {'pid': 1, 'host': 'elsewhere', 'since': 'then'}):\n"
            "    print('holding', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "fasttrain", *tiny_args(data_root, run, *RUN)], cwd=ROOT, capture_output=True,
                              text=True, env=subprocess_env(), timeout=600)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    printed = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(printed) == 1, proc.stderr[-3000:]
    assert "is in use by another training (pid 1 on elsewhere since then)" in printed[0]
    assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)) <= {"2", "-15"}, proc.stderr[-3000:]
    assert not run.exists()


def test_ctrl_c_mid_epoch_saves_a_checkpoint_there_and_its_resume_command_continues_exactly(data_root, reference,
                                                                                           tmp_path):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, *RUN)
    # a step to spare before an epoch's end: a signal read one step late must still land mid-epoch
    at = random.Random().choice([s for s in range(4, TOTAL_STEPS - 2)
                                 if s % 3 and s % STEPS_PER_EPOCH not in (0, STEPS_PER_EPOCH - 1)])
    print(f"Ctrl-C once step {at} is logged")
    first = subprocess.Popen(hooked_fasttrain(SLOW_STEPS, args), cwd=ROOT, env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: logged_steps(run) >= at, timeout=300, proc=first)
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 130, stdout[-2000:] + stderr[-2000:]
    stopped = ckpt_io.list_checkpoints(RunDir(run).checkpoints)[-1]
    state = ckpt_io.load_checkpoint(stopped)
    assert state["step"] == logged_steps(run) >= at and state["step"] % STEPS_PER_EPOCH, "not a mid-epoch checkpoint"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted at step {state['step']}; checkpoint {stopped} written; continue with: "), stderr
    command = shlex.split(last.split("continue with: ", 1)[1])
    assert command[:3] == ["python", "-m", "fasttrain"] and command[3:] == args + ["--resume", "auto"]

    resumed = run_in_process(command[3:], check=True)
    assert f"resume: {stopped}" in resumed.stdout
    assert_same_run(run, reference)
    assert not leftover_temp_files(run)


# --- a kill or a full disk in the middle of writing a checkpoint -------------------------------------

def test_kill_during_checkpoint_write_keeps_previous_and_resume_auto_picks_it(data_root, reference, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, *RUN)
    hook = ("import fasttrain.atomic\nfrom tiny_runs import FailingWrites, kill_self\n"
            "fasttrain.atomic.os = FailingWrites('.ckpt_', nth=2, fail=kill_self)")  # SIGKILL half-way through step 6's
    proc = subprocess.run(hooked_fasttrain(hook, args), cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    ckpts = RunDir(run).checkpoints
    partial = leftover_temp_files(run)
    assert len(partial) == 1 and partial[0].name.startswith(".ckpt_e0000_s00000006.pt."), partial
    assert [p.name for p in ckpt_io.list_checkpoints(ckpts)] == ["ckpt_e0000_s00000003.pt"]  # the torn file is no checkpoint
    assert ckpt_io.load_checkpoint(ckpts / "ckpt_e0000_s00000003.pt")["step"] == 3

    resumed = run_in_process(args + ["--resume", "auto"], check=True)
    assert f"resume: {ckpts / 'ckpt_e0000_s00000003.pt'}" in resumed.stdout
    assert_same_run(run, reference)
    assert not leftover_temp_files(run), "the torn temporary file was not cleaned up"


@pytest.mark.parametrize("target, nth, message", [
    (".ckpt_", 2, "could not write"),            # the second checkpoint (step 6), half written
    ("results.json", 1, "disk full while writing"),  # after the last checkpoint: results.json
])
def test_disk_full_is_one_line_exit_2_and_resume_auto_finishes(data_root, reference, tmp_path, monkeypatch,
                                                               target, nth, message):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, *RUN)
    monkeypatch.setattr(fasttrain.atomic, "os", FailingWrites(target, nth=nth))
    failed = run_in_process(args)
    monkeypatch.undo()
    assert failed.returncode == 2, failed
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], failed.stderr
    assert "No space left on device" in lines[0] and "--resume auto" in lines[0]
    assert not leftover_temp_files(run) and not RunDir(run).results.exists()
    ckpts = ckpt_io.list_checkpoints(RunDir(run).checkpoints)
    assert ckpts, "no checkpoint survived"
    before = snapshot(*ckpts)
    state = ckpt_io.load_checkpoint(ckpts[-1])  # the previous checkpoint is intact and loads
    assert state["step"] == (3 if target == ".ckpt_" else TOTAL_STEPS)

    run_in_process(args + ["--resume", "auto"], check=True)
    assert snapshot(*ckpts) == before  # resuming never rewrites an existing checkpoint
    assert_same_run(run, reference)


def test_start_after_an_attempt_killed_before_its_first_checkpoint_logs_each_step_once(data_root, reference,
                                                                                      tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, *RUN)

    def interrupted():
        raise KeyboardInterrupt  # stands for a kill: steps 1-3 are logged, no checkpoint is complete

    monkeypatch.setattr(fasttrain.atomic, "os", FailingWrites(".ckpt_", fail=interrupted))
    assert run_in_process(args).returncode == 130
    monkeypatch.undo()
    assert logged_steps(run) == 3 and not ckpt_io.list_checkpoints(RunDir(run).checkpoints)

    run_in_process(args, check=True)  # the same command (torchrun's restart does the same)
    assert_same_run(run, reference)


# --- a kill while the cache is prepared --------------------------------------------------------------

def copy_source(data_root: Path, dest: Path) -> Path:
    """The synthetic Tiny-ImageNet-layout tree without its cache."""
    shutil.copytree(data_root, dest, ignore=shutil.ignore_patterns("process", ".process*"))
    return dest


def prepare_args(root: Path, *extra: str) -> list[str]:
    return ["prepare", "--source", "tiny-imagenet", "--root", str(root), "--image-size", "32", "--workers", "1", *extra]


def hooked_prepare(hook: str, args: list[str]) -> subprocess.CompletedProcess:
    code = (f"{hook}\nfrom fasttrain.data.__main__ import main\nfrom fasttrain.errors import run_cli\n"
            "raise SystemExit(run_cli(lambda: main(sys.argv[1:])))")
    return subprocess.run([sys.executable, "-c", "import os, signal, sys\n" + code, *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


KILL_MID_DECODE = """
import fasttrain.data.prepare as prepare
real_decode, done = prepare._decode_rows, []
def decode_then_die(task):
    result = real_decode(task)
    done.append(task)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
prepare._decode_rows = decode_then_die
"""

# The cache is swapped into place by fasttrain.atomic.replace_dir (two renames); kill around the first.
KILL_AT_RENAME = """
import fasttrain.atomic as atomic
real_os = atomic.os
class OsKilledAtRename:
    def __getattr__(self, name):
        return getattr(real_os, name)
    def rename(self, src, dst):
        {before}
        real_os.rename(src, dst)
        {after}
atomic.os = OsKilledAtRename()
"""
KILL = "os.kill(os.getpid(), signal.SIGKILL)"


@pytest.mark.parametrize("hook, existing", [
    pytest.param(KILL_MID_DECODE, False, id="mid-decode"),
    pytest.param(KILL_AT_RENAME.format(before=KILL, after=""), False, id="complete-not-yet-renamed"),
    pytest.param(KILL_AT_RENAME.format(before="", after=KILL), True, id="old-cache-moved-aside-new-not-in-place"),
])
def test_kill_during_prepare_leaves_no_accepted_cache_and_next_prepare_rebuilds(data_root, reference, tmp_path,
                                                                                 hook, existing):
    root = copy_source(data_root, tmp_path / "data")
    cache_dir = tiny_cache_dir(root)
    temporary, old = f".{cache_dir.name}.tmp-*", f".{cache_dir.name}.old-*"
    if existing:  # a damaged cache of the same parameters, being replaced
        run_cli(prepare_args(root), module="fasttrain.data")
        labels = cache_dir / "labels_train.npy"
        labels.write_bytes(labels.read_bytes()[:-64])
    killed = hooked_prepare(hook, prepare_args(root))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list(cache_dir.parent.glob(temporary)), "the kill left no temporary directory: it came too late"
    with pytest.raises(CacheError):
        open_cache(cache_dir)

    rebuilt = run_cli(prepare_args(root), module="fasttrain.data")
    assert "built cache" in rebuilt.stderr
    assert not list(cache_dir.parent.glob(temporary)) and not list(cache_dir.parent.glob(old))
    cache = open_cache(cache_dir, verify=True)
    want = open_cache(tiny_cache_dir(data_root)).meta["splits"]
    assert {s: e["images"]["sha256"] for s, e in cache.meta["splits"].items()} == \
           {s: e["images"]["sha256"] for s, e in want.items()}


def test_training_after_a_killed_prepare_rebuilds_the_cache_and_trains(data_root, tmp_path):
    root = copy_source(data_root, tmp_path / "data")
    assert hooked_prepare(KILL_MID_DECODE, prepare_args(root)).returncode == -signal.SIGKILL
    out = tmp_path / "run"
    trained = run_in_process(tiny_args(root, out, "train.epochs=1", "train.max_steps=2",
                                       "data.source=tiny-imagenet"), check=True)
    assert "built cache" in trained.stdout
    assert json.loads(RunDir(out).results.read_text())["steps"] == 2
    open_cache(tiny_cache_dir(root), verify=True)


# --- elastic restart under torchrun ------------------------------------------------------------------

def children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:  # the process has exited meanwhile
        pass
    return found


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def worker_pids(torchrun_pid: int) -> dict[int, int] | None:
    """rank → pid of torchrun's workers, once both are there."""
    workers = {rank_of(pid): pid for pid in children(torchrun_pid)}
    return workers if {0, 1} <= set(workers) else None


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow
@pytest.mark.dist
def test_elastic_restart_after_a_worker_is_killed_resumes_from_the_newest_checkpoint(data_root, reference, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, *RUN)
    with open(tmp_path / "torchrun.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "--max-restarts=1", "-m", "fasttrain", *args], cwd=ROOT,
                                env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            first = wait_for(lambda: ckpt_io.list_checkpoints(RunDir(run).checkpoints), timeout=400, proc=proc)[0]
            step = int(first.stem.split("_s")[1])
            wait_for(lambda: logged_steps(run) >= step + 1, timeout=120, proc=proc)
            workers = wait_for(lambda: worker_pids(proc.pid), timeout=10)
            newest = ckpt_io.list_checkpoints(RunDir(run).checkpoints)[-1]
            os.kill(workers[1], signal.SIGKILL)
            proc.wait(timeout=500)
        finally:
            if proc.poll() is None:  # a hung job: end torchrun's workers and torchrun, by pid
                for pid in descendants(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                proc.kill()
            proc.wait()
    output = (tmp_path / "torchrun.log").read_text()
    assert proc.returncode == 0, output[-4000:]
    resumes = [line for line in output.splitlines() if "resume: " in line]
    assert resumes, output[-4000:]
    resumed_from = Path(resumes[-1].split("resume: ", 1)[1].split(" (epoch")[0])
    assert resumed_from.name >= newest.name, (resumed_from, newest)  # the newest complete one at restart
    results = json.loads(RunDir(run).results.read_text())
    assert results["steps"] == TOTAL_STEPS and results["world_size"] == 2
    assert [r["step"] for r in step_records(run)] == list(range(1, TOTAL_STEPS + 1))  # each step logged once
    assert not leftover_temp_files(run)


# --- damaged caches ----------------------------------------------------------------------------------

def copy_data(data_root: Path, dest: Path) -> Path:
    shutil.copytree(data_root, dest)
    return dest


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_byte_in_cached_images_is_refused_before_training_naming_the_file(data_root, reference, tmp_path):
    root = copy_data(data_root, tmp_path / "data")
    images = tiny_cache_dir(root) / "images_train.npy"
    flip_byte(images, images.stat().st_size // 2)
    before = snapshot(root / "process")
    out = tmp_path / "run"
    failed = run_in_process(tiny_args(root, out, "train.epochs=1"))
    assert failed.returncode == 2, failed
    line = failed.stderr.strip()
    assert "\n" not in line and str(images) in line and "sha256" in line, line
    assert snapshot(root / "process") == before and not out.exists()


@pytest.mark.parametrize("damage, fragment", [
    ("truncate labels_train.npy", "labels_train.npy is"),
    ("meta.json of format version 0", "format version 0"),
])
def test_damaged_cache_is_caught_named_and_rebuilt_before_training(data_root, reference, tmp_path, damage, fragment):
    root = copy_data(data_root, tmp_path / "data")
    cache_dir = tiny_cache_dir(root)
    if damage.startswith("truncate"):
        labels = cache_dir / "labels_train.npy"
        labels.write_bytes(labels.read_bytes()[:-64])
    else:
        meta = json.loads((cache_dir / "meta.json").read_text())
        meta["format_version"] = 0
        (cache_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=fragment):
        open_cache(cache_dir)
    out = tmp_path / "run"
    trained = run_in_process(tiny_args(root, out, *RUN, "train.max_steps=2"), check=True)
    stale = [line for line in trained.stdout.splitlines() if "is stale" in line]
    assert len(stale) == 1 and fragment in stale[0] and str(cache_dir) in stale[0], trained.stdout
    assert stale[0] in trained.stdout.split("data: backend")[0]  # said before training starts
    open_cache(cache_dir, verify=True)
    assert step_records(out) == step_records(reference)[:2]  # the rebuilt cache is the same data


# --- damaged checkpoints -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(data_root, tmp_path_factory):
    """The reference run stopped after step 9: checkpoints at steps 3, 6, 8 (epoch end) and 9, no results.json."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    run_in_process(tiny_args(data_root, out, *RUN, "train.max_steps=9"), check=True)
    RunDir(out).results.unlink()
    assert [p.name for p in ckpt_io.list_checkpoints(RunDir(out).checkpoints)][-1] == "ckpt_e0001_s00000009.pt"
    return out


def damage_checkpoint(path: Path, how: str) -> None:
    if how == "flipped byte":
        flip_byte(path, path.stat().st_size // 2)  # inside a tensor: torch.load alone would not notice
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


@pytest.mark.parametrize("how, fragment", [("flipped byte", "fails its CRC-32 check"),
                                           ("truncated", "corrupt or truncated")])
def test_damaged_checkpoint_is_refused_and_resume_auto_uses_the_previous_one(stopped_run, reference, data_root,
                                                                             tmp_path, how, fragment):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    newest = RunDir(run).checkpoints / "ckpt_e0001_s00000009.pt"
    damage_checkpoint(newest, how)

    for args in (["eval", "--ckpt", str(newest)], tiny_args(data_root, tmp_path / "other", *RUN) + ["--resume", str(newest)]):
        refused = run_in_process(args)
        assert refused.returncode == 2, refused
        assert refused.stderr.count("\n") == 1 and fragment in refused.stderr and str(newest) in refused.stderr
    assert not (tmp_path / "other").exists()

    resumed = run_in_process(tiny_args(data_root, run, *RUN) + ["--resume", "auto"], check=True)
    assert f"warning: skipping {newest.name}" in resumed.stdout and fragment in resumed.stdout
    assert f"resume: {RunDir(run).checkpoints / 'ckpt_e0001_s00000008.pt'}" in resumed.stdout
    assert_same_run(run, reference)


def test_random_byte_flips_anywhere_in_a_checkpoint_never_load_as_different_numbers(stopped_run, tmp_path):
    source = RunDir(stopped_run).checkpoints / "ckpt_e0001_s00000009.pt"
    intact = ckpt_io.load_checkpoint(source)
    rng = random.Random(8)
    damaged = tmp_path / "ckpt_e0001_s00000009.pt"
    size = source.stat().st_size
    for offset in rng.sample(range(size), 40):
        shutil.copyfile(source, damaged)
        flip_byte(damaged, offset)
        try:
            state = ckpt_io.load_checkpoint(damaged)
        except ckpt_io.CheckpointError:
            continue
        # a flip in bytes that carry no data (padding) may load: then every number must be the same
        assert same_weights(state["model"], intact["model"]), offset
        assert state["step"] == intact["step"] and np.isclose(state["best_val"], intact["best_val"])
