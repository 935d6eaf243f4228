"""configs/fast/ and configs/studies/fast.toml: every recipe validates, plans, uses the new options, and says it is a target."""

from __future__ import annotations

from pathlib import Path

import pytest

from fasttrain.config import load_config
from fasttrain.study.plan import plan_suite
from fasttrain.study.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
FAST = sorted((REPO / "configs" / "fast").glob("*.toml"))
STUDY_EPOCHS = {"resnet18": 100, "resnet50": 100, "resnext50_32x4d": 100, "vgg19": 200, "t2t_vit_t_14": 100}


def test_one_recipe_per_architecture():
    assert [p.stem for p in FAST] == ["resnet18", "resnet50", "resnext50", "t2t_vit", "vgg19_bn"]


@pytest.mark.parametrize("path", FAST, ids=lambda p: p.stem)
def test_recipe_validates_within_the_studys_epochs_and_states_its_rationale(path):
    cfg = load_config(path)
    assert cfg.train.epochs <= STUDY_EPOCHS[cfg.model.name]
    assert cfg.data.augment in ("randaugment", "trivialaugment") and cfg.data.backend == "dali"
    assert cfg.data.erasing > 0 and cfg.sched.name == "linear" and cfg.eval.tta == "flip"
    if not cfg.model.name.startswith("t2t"):
        assert 0 < cfg.data.progressive_start_size < cfg.data.image_size
    header = path.read_text().split("\n[")[0]
    assert "TARGET, not a measured result" in header and "Rationale and sources" in header


@pytest.mark.parametrize("quick", [False, True])
def test_fast_suite_plans_every_recipe(quick):
    suite = load_suite(REPO / "configs" / "studies" / "fast.toml")
    runs = plan_suite(suite, out_dir=Path("/nonexistent"), quick=quick)
    assert {r.cfg.model.name for r in runs} == set(STUDY_EPOCHS)
    if quick:
        assert all(r.cfg.data.source == "synthetic" and r.cfg.train.epochs <= 3 for r in runs)
