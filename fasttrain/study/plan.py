"""Turn a suite into checked runs: each run's overrides, resolved config, run directory and command.

Every run is checked here, before any run starts: its config file and overrides against the
schema (load_config), its model and knobs by building the model on the meta device and passing
one batch of the data's image size through it, and its run directory against the config it holds.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasttrain.config import Config, ConfigError, from_dict, load_config, read_toml, to_dict
from fasttrain.engine.optim import split_batch
from fasttrain.rundir import RunDir
from fasttrain.errors import UserError, did_you_mean
from fasttrain.study.suite import RunSpec, Suite, SuiteError

# Without a prepared cache the class count is unknown; it changes no shape the check cares about.
_TINY_IMAGENET_CLASSES = 200


@dataclass(frozen=True)
class PlannedRun:
    name: str
    config_path: Path
    overrides: tuple[str, ...]
    """Every `--set` the run gets, in order: suite, run, [quick], run quick, command line."""
    run_dir: Path
    cfg: Config
    seed: int | None = None
    """The repeat's train.seed when the suite lists seeds (its run directory is NAME/seedN); None: one run."""

    @property
    def key(self) -> str:
        """The run's unique name in the suite: NAME, or NAME/seedN for one seed of a repeated run."""
        return self.name if self.seed is None else f"{self.name}/{seed_dir(self.seed)}"


def seed_dir(seed: int) -> str:
    return f"seed{seed}"


def display_path(path: Path) -> str:
    """A path relative to the current directory when it lies below it (shorter commands), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def run_overrides(suite: Suite, spec: RunSpec, *, quick: bool, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    quick_part = suite.quick_overrides + spec.quick_overrides if quick else ()
    return suite.overrides + spec.overrides + quick_part + tuple(extra)


def check_model(cfg: Config, where: str) -> None:
    """The trainer's own model check (meta device, one batch of the data's image size), naming the run."""
    from fasttrain.engine.runtime import check_model_config

    num_classes = cfg.data.synth_classes if cfg.data.source == "synthetic" else _TINY_IMAGENET_CLASSES
    try:
        check_model_config(cfg, num_classes)
    except UserError as err:
        raise SuiteError(f"{where}: {err}") from None


# Settings a run may change between restarts without becoming another experiment.
_OPERATIONAL_SECTIONS = {"log", "ckpt", "dist", "compile"}
_OPERATIONAL_KEYS = {("data", "root"), ("data", "cache_dir"), ("data", "download"), ("data", "backend"),
                     ("data", "prepare_workers"), ("data", "loader_workers"), ("train", "device")}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for section in new:
        if section in _OPERATIONAL_SECTIONS:
            continue
        for key in {**old.get(section, {}), **new[section]}:  # [model] lists only the knobs set: either side may lack one
            if (section, key) in _OPERATIONAL_KEYS:
                continue
            before, after = old.get(section, {}).get(key), new[section].get(key)
            if before != after:
                out.append(f"{section}.{key} {before!r} → {after!r}")
    return out


def check_run_dir(run: PlannedRun, where: str) -> None:
    """A run directory that holds another config's run is never resumed or reported as this one."""
    saved = RunDir(run.run_dir).config
    if not saved.is_file():
        return
    try:
        old = to_dict(from_dict(read_toml(saved), str(saved)))
    except ConfigError as err:
        raise SuiteError(f"{where}: {run.run_dir} holds an unreadable config ({err}); delete the directory or pass another --out") from None
    changes = _differences(old, to_dict(run.cfg))
    if changes:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise SuiteError(
            f"{where}: {run.run_dir} holds a run of another config ({shown}); "
            f"delete that directory or pass another --out"
        )


def check_selection(suite: Suite, only: tuple[str, ...]) -> list[str]:
    """The names of the runs to run (`only`, in suite order), or every run when `only` is empty."""
    names = [spec.name for spec in suite.runs]
    for name in only:
        if name not in names:
            raise SuiteError(f"--only: {suite.path} has no run '{name}'; {did_you_mean(name, names)}runs: {', '.join(names)}")
    return [name for name in names if not only or name in only]


def plan_suite(suite: Suite, *, out_dir: Path, quick: bool, extra_overrides: tuple[str, ...] = (),
               seeds: tuple[int, ...] = ()) -> list[PlannedRun]:
    """Check every run of the suite (a run left out by --only is still reported) and return them in order: one per
    run, or one per (run, seed) when `seeds` (the command line's), the run's or the suite's seeds are given."""
    planned = []
    for spec in suite.runs:
        where = f"{suite.path}: run '{spec.name}'"
        if not spec.config.is_file():
            raise SuiteError(f"{where}: config file not found: {display_path(spec.config)} (paths are relative to the suite file)")
        overrides = run_overrides(suite, spec, quick=quick, extra=extra_overrides)
        try:
            cfg = load_config(spec.config, overrides)
        except ConfigError as err:
            raise SuiteError(f"{where}: {err}") from None
        check_model(cfg, where)
        run_seeds = seeds or spec.seeds
        if not run_seeds:
            run = PlannedRun(name=spec.name, config_path=spec.config, overrides=overrides,
                             run_dir=out_dir / spec.name, cfg=cfg)
            check_run_dir(run, where)
            planned.append(run)
            continue
        for seed in run_seeds:  # the seed last, so that it wins over any train.seed set before it
            seeded = overrides + (f"train.seed={seed}",)
            run = PlannedRun(name=spec.name, config_path=spec.config, overrides=seeded,
                             run_dir=out_dir / spec.name / seed_dir(seed), cfg=load_config(spec.config, seeded), seed=seed)
            check_run_dir(run, f"{where} seed {seed}")
            planned.append(run)
    return planned


def check_world_size(suite: Suite, planned: list[PlannedRun], nproc: int) -> None:
    """Each rank takes batch_size / nproc: a batch that does not split would fail only once the job runs."""
    for run in planned:
        t = run.cfg.train
        try:
            split_batch(t.batch_size, nproc, t.grad_accum)
        except ConfigError:
            raise SuiteError(
                f"{suite.path}: run '{run.key}': [train] batch_size {t.batch_size} (grad_accum {t.grad_accum}) does not "
                f"split over --nproc {nproc} processes; pick an --nproc that divides it or override train.batch_size"
            ) from None


def train_command(run: PlannedRun, *, nproc: int = 1, python: str = "python", torchrun: list[str] | None = None) -> list[str]:
    """The trainer command of one run; `torchrun` replaces the `torchrun` launcher word when given."""
    if nproc > 1:
        launcher = (torchrun or ["torchrun"]) + ["--standalone", f"--nproc_per_node={nproc}", "-m", "fasttrain"]
    else:
        launcher = [python, "-m", "fasttrain"]
    sets = [part for override in run.overrides for part in ("--set", override)]
    return launcher + ["--cfg", display_path(run.config_path), *sets, "--out", display_path(run.run_dir), "--resume", "auto"]


def local_command(run: PlannedRun, *, nproc: int = 1) -> list[str]:
    """The command as this machine runs it: this interpreter, torchrun through it."""
    return train_command(run, nproc=nproc, python=sys.executable,
                         torchrun=[sys.executable, "-m", "torch.distributed.run"])


def child_environment() -> dict[str, str]:
    """The environment of a run: the caller's, with this fasttrain first on the import path."""
    import fasttrain

    env = dict(os.environ)
    package_root = str(Path(fasttrain.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
