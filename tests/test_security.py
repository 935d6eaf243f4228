"""Hostile files and values: a checkpoint carrying a pickled object is refused (never loaded without
weights_only), and nothing in a config is executed or imported by name outside the registries."""

from __future__ import annotations

import ast
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.rundir import RunDir
from tiny_runs import ROOT, run_cli, run_in_process, snapshot, tiny_args


class RunsAShellCommand:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    out = base / "run"
    run_in_process(tiny_args(base / "synthetic", out, "train.epochs=1", "train.max_steps=4", "ckpt.every_steps=2"),
                   check=True)
    RunDir(out).results.unlink()
    return base, out


def plant_malicious_checkpoint(path: Path, genuine: Path, marker: Path) -> None:
    """A real checkpoint's contents plus one object whose unpickling runs a command."""
    state = torch.load(genuine, weights_only=True)
    state["note"] = RunsAShellCommand(marker)
    torch.save(state, path)


def test_a_checkpoint_carrying_a_pickled_object_is_refused_everywhere(stopped_run, tmp_path, monkeypatch):
    base, stopped = stopped_run
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    ckpts = ckpt_io.list_checkpoints(RunDir(run).checkpoints)
    marker = tmp_path / "pwned"
    evil = RunDir(run).checkpoints / "ckpt_e0000_s00000006.pt"  # newer than every genuine one
    plant_malicious_checkpoint(evil, ckpts[-1], marker)
    with pytest.raises(Exception):  # the file really is malicious: torch refuses it under weights_only
        torch.load(evil, weights_only=True)

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    for args in (["eval", "--ckpt", str(evil)],
                 tiny_args(base / "synthetic", tmp_path / "other", "train.epochs=1") + ["--resume", str(evil)]):
        refused = run_in_process(args)
        assert refused.returncode == 2, refused
        assert "holds pickled Python objects, which fasttrain refuses to load" in refused.stderr
        assert refused.stderr.count("\n") == 1 and str(evil) in refused.stderr
    assert not (tmp_path / "other").exists()

    before = snapshot(*ckpts)
    resumed = run_in_process(tiny_args(base / "synthetic", run, "train.epochs=1", "ckpt.every_steps=2", "ckpt.keep=10")
                             + ["--resume", "auto"], check=True)
    assert f"warning: skipping {evil.name}" in resumed.stdout and "pickled Python objects" in resumed.stdout
    assert f"resume: {ckpts[-1]}" in resumed.stdout  # the newest genuine checkpoint
    assert snapshot(*ckpts) == before
    assert not marker.exists(), "the pickled object was executed"
    assert calls and all(flag is True for flag in calls), calls  # never a weights_only=False fallback


def test_a_non_checkpoint_pt_file_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)  # tensors only, but not written by fasttrain
    refused = run_in_process(["eval", "--ckpt", str(path)])
    assert refused.returncode == 2 and "is not a fasttrain checkpoint" in refused.stderr


# (key, value, fragment of the refusal, where it is refused: "cli" = config validation in a real process,
# "in" = past torch's import, run in this process)
CODE_LIKE_VALUES = [
    ("model.name", "__import__('os').system('touch {marker}')", "unknown model", "in"),
    ("model.name", "__class__", "unknown model", "in"),
    ("model.name", "create_model", "unknown model", "in"),
    ("model.name", "torch.nn.Linear", "unknown model", "in"),
    ("data.backend", "os.system", "[data] backend must be one of", "cli"),
    ("optim.name", "torch.optim.LBFGS", "[optim] name must be one of", "cli"),
    ("sched.name", "eval('1')", "[sched] name must be one of", "cli"),
    ("data.source", "$(touch {marker})", "[data] source must be one of", "cli"),
    ("data.root", "$(touch {marker})", "does not exist", "in"),
]


@pytest.mark.parametrize("key, value, fragment, process", CODE_LIKE_VALUES)
def test_config_values_are_data_never_code(stopped_run, tmp_path, key, value, fragment, process):
    base, _ = stopped_run
    marker = tmp_path / "pwned"
    literal = value.format(marker=marker).replace("\\", "\\\\").replace('"', '\\"')
    overrides = [f'{key}="{literal}"'] + (["data.source=imagefolder"] if key == "data.root" else [])
    args = tiny_args(base / "synthetic", tmp_path / "run", "train.epochs=1", *overrides)
    result = run_cli(args, check=False, timeout=300) if process == "cli" else run_in_process(args)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert not marker.exists(), "a config value was executed"
    assert not (tmp_path / "run").exists()


# --- a static guard over the package: no way to run code from a file or a value ---------------------------

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ATTRS = {("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"), ("yaml", "load"),
                   ("os", "system"), ("os", "popen"), ("dill", "load"), ("shelve", "open")}
# Dynamic imports that are reviewed: a fixed table of the package's own modules, not a value from a config.
REVIEWED_DYNAMIC_IMPORTS = {("fasttrain/data/__init__.py", "importlib.import_module(_EXPORTS[name])")}


def package_calls():
    """(file, call node, its source text) for every call in the package."""
    for path in sorted((ROOT / "fasttrain").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                if node.lineno == node.end_lineno:
                    text = lines[node.lineno - 1][node.col_offset:node.end_col_offset]
                else:
                    text = ast.get_source_segment(source, node) or ""
                yield rel, node, text


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_the_package_never_executes_or_unpickles_what_it_reads():
    problems = []
    for rel, node, text in package_calls():
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
            problems.append(f"{rel}: {text}")
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if (owner, func.attr) in FORBIDDEN_ATTRS:
                problems.append(f"{rel}: {text}")
            if (owner, func.attr) == ("torch", "load"):
                flag = keyword(node, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{rel}: torch.load without weights_only=True: {text}")
            if func.attr == "load" and owner in {"np", "numpy"}:
                flag = keyword(node, "allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{rel}: np.load with allow_pickle: {text}")
            if func.attr == "import_module" and not (node.args and isinstance(node.args[0], ast.Constant)):
                if (rel, text) not in REVIEWED_DYNAMIC_IMPORTS:
                    problems.append(f"{rel}: import by a computed name: {text}")
            if keyword(node, "shell") is not None:
                problems.append(f"{rel}: subprocess with shell=: {text}")
    assert not problems, "\n".join(problems)


def test_the_guard_sees_what_it_forbids(tmp_path, monkeypatch):
    """The static check above is not vacuous: planted in a copy of the package, each pattern is reported."""
    fake_root = tmp_path / "repo"
    (fake_root / "fasttrain").mkdir(parents=True)
    (fake_root / "fasttrain" / "bad.py").write_text(
        "import torch, pickle, importlib\n"
        "torch.load('x')\n"
        "torch.load('x', weights_only=False)\n"
        "pickle.loads(b'')\n"
        "eval('1')\n"
        "importlib.import_module(name)\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    with pytest.raises(AssertionError) as found:
        test_the_package_never_executes_or_unpickles_what_it_reads()
    report = str(found.value)
    for planted in ("torch.load('x')", "weights_only=False", "pickle.loads", "eval('1')", "import_module(name)"):
        assert "fasttrain/bad.py: " in report and planted in report, (planted, report)
