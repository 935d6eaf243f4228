"""export to safetensors / torch.export / ONNX: each artifact round-trips to the eager model's logits, or nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fasttrain.data.cache import open_cache
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.inference.loaded import open_model
from tiny_runs import run_in_process, tiny_args, tiny_cache_dir

ROUND_TRIP = 1e-4  # max |logit difference| allowed relative to max(1, max |logit|), as export itself checks


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run with EMA weights (1 epoch, 8 steps)."""
    base = tmp_path_factory.mktemp("export")
    run = base / "run"
    run_in_process(tiny_args(base / "synthetic", run, "train.epochs=1", "train.ema=true", "train.ema_decay=0.5"),
                   check=True)
    images, labels = open_cache(tiny_cache_dir(base / "synthetic")).split("test")
    return run, ckpt_io.list_checkpoints(run / "checkpoints")[-1], np.array(images[:9])


def eager_logits(ckpt: Path, pixels_nhwc: np.ndarray, *, ema: bool = False) -> np.ndarray:
    net = open_model(ckpt, ema=ema).pixels_to_logits()
    with torch.no_grad():
        return net(torch.from_numpy(pixels_nhwc).permute(0, 3, 1, 2)).numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> float:
    diff = float(np.abs(got - want).max())
    assert got.shape == want.shape and diff <= ROUND_TRIP * max(1.0, float(np.abs(want).max())), diff
    assert (got.argmax(1) == want.argmax(1)).all()
    return diff


def test_safetensors_bundle_round_trips_and_predicts_like_the_checkpoint(trained, tmp_path):
    run, ckpt, pixels = trained
    out = tmp_path / "bundle" / "model.safetensors"
    result = run_in_process(["export", "--ckpt", str(ckpt), "--format", "safetensors", "--out", str(out)], check=True)
    assert "max |logit difference| 0 " in result.stdout  # same weights, same code: bit-identical
    sidecar = json.loads((out.parent / "model.safetensors.json").read_text())
    assert sidecar["model"] == "resnet18" and sidecar["export_format"] == "safetensors" and sidecar["weights"] == "model"
    assert len(sidecar["class_names"]) == 4 and sidecar["check"]["max_abs_logit_diff"] == 0.0
    from safetensors.torch import load_file

    plain = torch.load(ckpt, weights_only=True)["model"]
    stored = load_file(out)
    assert all(torch.equal(stored[k], v) for k, v in plain.items())
    assert_close(eager_logits(out, pixels), eager_logits(ckpt, pixels))


def test_safetensors_with_ema_holds_the_ema_weights(trained, tmp_path):
    run, ckpt, pixels = trained
    out = tmp_path / "ema.safetensors"
    run_in_process(["export", "--ckpt", str(ckpt), "--format", "safetensors", "--ema", "--out", str(out)], check=True)
    from safetensors.torch import load_file

    state = torch.load(ckpt, weights_only=True)
    stored = load_file(out)
    assert all(torch.equal(stored[k], v) for k, v in state["ema"].items())
    assert not all(torch.equal(stored[k], v) for k, v in state["model"].items())
    assert json.loads((tmp_path / "ema.safetensors.json").read_text())["weights"] == "ema"
    assert_close(eager_logits(out, pixels), eager_logits(ckpt, pixels, ema=True))


def test_torch_export_program_takes_uint8_batches_of_any_size(trained, tmp_path):
    run, ckpt, pixels = trained
    out = tmp_path / "model.pt2"
    run_in_process(["export", "--ckpt", str(run / "best_model.pt"), "--format", "export", "--out", str(out)], check=True)
    program = torch.export.load(str(out)).module()  # written by this test a moment ago
    want = eager_logits(run / "best_model.pt", pixels)
    for n in (9, 1, 4):
        got = program(torch.from_numpy(pixels[:n]).permute(0, 3, 1, 2).contiguous()).detach().numpy()
        assert_close(got, want[:n])
    assert json.loads((tmp_path / "model.pt2.json").read_text())["input"] == "uint8"


def test_onnx_round_trips_in_onnxruntime_with_a_dynamic_batch(trained, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, ckpt, pixels = trained
    out = tmp_path / "model.onnx"
    run_in_process(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(out)], check=True)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    want = eager_logits(ckpt, pixels)
    diffs = [assert_close(session.run(None, {"inputs": np.ascontiguousarray(pixels[:n].transpose(0, 3, 1, 2))})[0],
                          want[:n]) for n in (9, 1, 5)]
    print(f"onnx max |logit difference| {max(diffs):.3g}")
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["fasttrain.card"])["class_ids"] == json.loads((tmp_path / "model.onnx.json").read_text())["class_ids"]


def test_onnx_float_input_is_the_bare_normalized_model(trained, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, ckpt, pixels = trained
    out = tmp_path / "float.onnx"
    run_in_process(["export", "--ckpt", str(ckpt), "--format", "onnx", "--input", "float", "--out", str(out)], check=True)
    net = open_model(ckpt).pixels_to_logits()
    normalized = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() * net.scale + net.shift).contiguous().numpy()
    got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"inputs": normalized})[0]
    assert_close(got, eager_logits(ckpt, pixels))


def test_a_failed_check_leaves_nothing_at_out(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, ckpt, _ = trained
    out = tmp_path / "strict.onnx"
    # onnxruntime's kernels round differently from PyTorch's: a zero tolerance is a real mismatch
    result = run_in_process(["export", "--ckpt", str(ckpt), "--format", "onnx", "--tolerance", "0", "--out", str(out)])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert "does not match the eager model" in result.stderr and "nothing was written" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed export left files (or its staging folder)"


def test_export_checks_on_given_images_and_a_bundle_exports_again(trained, tmp_path):
    import cv2

    run, ckpt, pixels = trained
    bundle = tmp_path / "model.safetensors"
    run_in_process(["export", "--ckpt", str(ckpt), "--format", "safetensors", "--out", str(bundle)], check=True)
    for i in range(3):
        assert cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(pixels[i], cv2.COLOR_RGB2BGR))
    result = run_in_process(["export", "--ckpt", str(bundle), "--format", "export", "--out", str(tmp_path / "b.pt2"),
                             "--images", str(tmp_path / "0.png"), str(tmp_path / "1.png"), str(tmp_path / "2.png")],
                            check=True)
    assert "checked on 3 of the given images" in result.stdout


def test_a_t2t_vit_with_single_head_token_attention_exports_to_onnx(trained, tmp_path):
    """T2T-ViT's token blocks call scaled_dot_product_attention on 3-D tensors, which onnxscript alone cannot
    translate; the artifact must still match the eager model."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fasttrain.inference.export import export_model
    from fasttrain.inference.loaded import LoadedModel
    from fasttrain.inference.loaded import model_from_card

    run, ckpt, pixels = trained
    card = dict(torch.load(ckpt, weights_only=True)["card"], model="t2t_vit_t_14",
                knobs={"img_size": 32, "token_dim": 16, "embed_dim": 32, "depth": 1, "num_heads": 2})
    torch.manual_seed(0)
    loaded = LoadedModel(tmp_path / "t2t.pt", card, model_from_card(card), "model")
    out = tmp_path / "t2t.onnx"
    result = export_model(loaded, "onnx", out, float_input=False, images=None, tolerance=1e-4)
    assert result.max_abs_diff <= result.allowed
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"inputs": np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))})[0]
    with torch.no_grad():
        want = loaded.pixels_to_logits()(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    assert_close(got, want)
