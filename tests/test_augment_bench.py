"""`python -m kernels_bench augment --smoke`: both backends report policy statistics that agree, and loader rates per case."""

from __future__ import annotations

import json

import pytest

from fasttrain.data.pipelines.backend_choice import dali_importable
from tiny_runs import run_cli


@pytest.mark.skipif(not dali_importable(), reason="needs nvidia-dali")
def test_augment_suite_smoke_reports_parity_and_loader_rates(tmp_path):
    out = tmp_path / "augment.json"
    run_cli(["augment", "--device", "cpu", "--smoke", "--json", str(out)], module="kernels_bench", timeout=300)
    result = json.loads(out.read_text())["result"]
    for policy in ("randaugment", "trivialaugment"):
        row = result["parity"][policy]
        for backend in ("reference", "dali"):
            assert 0.5 < row[backend]["changed"] <= 1.0  # a policy that ran changes most images
            assert 0.0 < row[backend]["geometric"] < 1.0
        assert row["largest_gap"] < 0.25  # 64 images: a loose bound that still catches a missing op family
    loader = result["loader_images_per_s"]
    assert set(loader) == {"rrc", "rrc+erasing", "trivialaugment", "randaugment"}
    assert set(loader["randaugment"]) == {"reference", "dali"} and set(loader["rrc"]) == {"reference", "torch", "dali"}
    assert all(f["images_per_s"] > 0 for case in loader.values() for f in case.values())
    assert loader["randaugment"]["dali"]["vs_reference"] > 0
