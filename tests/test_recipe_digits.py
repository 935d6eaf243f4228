"""The default recipe beats the study's plain recipe on real data at equal wall-clock, beyond its interval
(configs/studies/recipe_digits.toml: scikit-learn's digits, 5 seeds per arm, the same model, batch and steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from digits_data import write_digits_imagefolder
from fasttrain.report.stats import difference, verdict
from tiny_runs import ROOT, run_cli, subprocess_env

SUITE = ROOT / "configs" / "studies" / "recipe_digits.toml"


def test_recipe_suite_plans_equal_budgets_and_differs_only_in_free_settings():
    """Equal wall-clock by construction: the arms share model, data, batch, epochs and steps; what differs is free."""
    from fasttrain.config import load_config, to_dict
    from fasttrain.study.plan import run_overrides
    from fasttrain.study.suite import load_suite

    suite = load_suite(SUITE)
    arms = {spec.name: to_dict(load_config(spec.config, run_overrides(suite, spec, quick=False))) for spec in suite.runs}
    assert set(arms) == {"plain", "default"} and len(suite.runs[0].seeds) >= 3
    for section in ("model",):
        assert arms["plain"][section] == arms["default"][section]
    for key in ("epochs", "batch_size", "grad_accum", "max_steps", "amp"):
        assert arms["plain"]["train"][key] == arms["default"]["train"][key], key
    for key in ("image_size", "source", "root", "backend"):
        assert arms["plain"]["data"][key] == arms["default"]["data"][key], key
    costly = {("train", "ema"), ("eval", "tta"), ("data", "augment"), ("data", "erasing"), ("train", "mixup"),
              ("train", "cutmix"), ("data", "progressive_start_size")}
    differ = {(s, k) for s in arms["plain"] for k in arms["plain"][s] if arms["plain"][s][k] != arms["default"][s].get(k)}
    assert differ and not differ & costly, differ  # schedule, lr, smoothing, crop scale: no extra compute per step


@pytest.mark.slow
def test_default_recipe_beats_the_plain_recipe_on_digits_beyond_its_interval(tmp_path):
    root = write_digits_imagefolder(tmp_path / "digits")
    out = tmp_path / "runs"
    run_cli([str(SUITE), "--out", str(out), "--set", f'data.root="{root}"'], module="fasttrain.study",
            env=subprocess_env(), timeout=3600)
    manifest = json.loads((out / "suite.json").read_text())
    tops: dict[str, list[float]] = {"plain": [], "default": []}
    for run in manifest["runs"]:
        results = json.loads((out / run["dir"] / "results.json").read_text())
        tops[run["name"]].append(results["test_top1"])
    d = difference(tops["plain"], tops["default"])
    print(verdict("plain", "default", d), tops)
    assert d.diff > 0 and d.excludes_zero, (verdict("plain", "default", d), tops)
    report = (out / "report" / "REPORT.md").read_text()
    assert "default better by" in report
