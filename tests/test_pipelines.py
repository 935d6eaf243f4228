"""Input pipelines: augmentation parity across backends, label alignment, sharding, resume, output format."""

import argparse

import numpy as np
import pytest
import torch

from fasttrain.config import DataConfig
from fasttrain.data.pipelines import build_pipeline, resolve_backend
from fasttrain.data.pipelines import backend_choice
from fasttrain.errors import UserError

CPU = torch.device("cpu")
SIZE = 64
RAMP = 4  # coordinate ramps: value = 4 * pixel coordinate (0..252 on a 64-pixel side)


def coordinate_images(count: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Channel 0 holds the image's own label; channel 1 = RAMP * x, channel 2 = RAMP * y."""
    labels = (np.arange(count) * 7 % 251).astype(np.int64)
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = np.empty((count, size, size, 3), np.uint8)
    images[..., 0] = labels[:, None, None]
    images[..., 1] = RAMP * x
    images[..., 2] = RAMP * y
    return images, labels


def to_pixels(batch: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    """Undo normalize: (N, H, W, 3) in 0..255 units."""
    x = batch.float().permute(0, 2, 3, 1).numpy()
    return x * (np.asarray(cfg.std) * 255) + np.asarray(cfg.mean) * 255


def collect(pipe) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    images, labels = [], []
    for x, y in pipe:
        images.append(x.clone())
        labels.append(y.clone())
    return images, labels


def crop_statistics(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Area fraction, aspect ratio (w/h) and flip of each sample's source window, read off the ramps."""
    xs = pixels[:, pixels.shape[1] // 2, :, 1] / RAMP
    ys = pixels[:, :, pixels.shape[2] // 2, 2] / RAMP
    out = pixels.shape[1]
    # sample centres span (window - window / out) source pixels
    width = np.abs(xs[:, -1] - xs[:, 0]) * out / (out - 1)
    height = np.abs(ys[:, -1] - ys[:, 0]) * out / (out - 1)
    width, height = np.maximum(width, 1.0), np.maximum(height, 1.0)
    return {"area": width * height / out**2, "aspect": width / height, "flip": xs[:, -1] < xs[:, 0]}


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda v: np.searchsorted(np.sort(v), grid, side="right") / len(v)
    return float(np.max(np.abs(cdf(a) - cdf(b))))


def cfg_for(backend: str, **kw) -> DataConfig:
    kw.setdefault("image_size", SIZE)
    kw.setdefault("loader_workers", 0)
    kw.setdefault("crop_scale", (0.08, 1.0))  # the study's RandomResizedCrop, which these statistics describe
    return DataConfig(backend=backend, **kw)


BACKENDS = ["torch", "dali", "reference"]


@pytest.fixture(scope="module")
def augmented():
    """One train epoch of RRC + flip from each backend over the same coordinate images."""
    images, labels = coordinate_images(512)
    result = {}
    for backend in BACKENDS:
        cfg = cfg_for(backend)
        xs, ys = collect(build_pipeline(cfg, images, labels, train=True, batch_size=128, device=CPU, seed=3))
        result[backend] = (torch.cat(xs), torch.cat(ys), cfg)
    return result


def test_rrc_statistics_match_reference(augmented):
    ref = crop_statistics(to_pixels(*augmented["reference"][::2]))
    # the study's RRC: area fraction ~ U(0.08, 1) (before rejection), log-aspect ~ U(log 3/4, log 4/3)
    assert 0.4 < np.median(ref["area"]) < 0.65
    assert np.quantile(ref["area"], 0.05) < 0.2
    for backend in ("torch", "dali"):
        stats = crop_statistics(to_pixels(*augmented[backend][::2]))
        assert ks_statistic(stats["area"], ref["area"]) < 0.15, backend
        assert ks_statistic(stats["aspect"], ref["aspect"]) < 0.15, backend
        assert abs(stats["flip"].mean() - 0.5) < 0.1 and abs(ref["flip"].mean() - 0.5) < 0.1


def test_normalized_channel_statistics_match_reference(augmented):
    ref = augmented["reference"][0].float()
    ref_mean, ref_std = ref.mean(dim=(0, 2, 3)), ref.std(dim=(0, 2, 3))
    for backend in ("torch", "dali"):
        x = augmented[backend][0].float()
        torch.testing.assert_close(x.mean(dim=(0, 2, 3)), ref_mean, atol=0.08, rtol=0)
        torch.testing.assert_close(x.std(dim=(0, 2, 3)), ref_std, atol=0.08, rtol=0.05)


def test_outputs_are_normalized_channels_last_on_device(augmented):
    for backend, (x, y, cfg) in augmented.items():
        assert x.shape == (512, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    for backend in BACKENDS:
        pipe = build_pipeline(cfg_for(backend), *coordinate_images(64), train=True, batch_size=32, device=CPU)
        x, y = next(iter(pipe))
        assert pipe.backend == backend
        assert x.is_contiguous(memory_format=torch.channels_last), backend
        assert x.device == CPU and y.device == CPU


@pytest.mark.parametrize("augment", ["rrc", "pad_crop", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_image_keeps_its_label(backend, augment):
    images, labels = coordinate_images(192)
    cfg = cfg_for(backend, augment=augment)
    pipe = build_pipeline(cfg, images, labels, train=True, batch_size=64, device=CPU, seed=1)
    seen = 0
    for x, y in pipe:
        centre = to_pixels(x, cfg)[:, SIZE // 2, SIZE // 2, 0]
        np.testing.assert_array_equal(np.rint(centre).astype(np.int64), y.numpy())
        seen += len(y)
    assert seen == 192


def test_reference_with_worker_processes_keeps_labels_and_determinism():
    images, labels = coordinate_images(96)
    cfg = cfg_for("reference", loader_workers=2)
    first = collect(build_pipeline(cfg, images, labels, train=True, batch_size=32, device=CPU, seed=5))
    in_process = collect(build_pipeline(cfg_for("reference"), images, labels, train=True, batch_size=32, device=CPU, seed=5))
    for a, b in zip(first[0], in_process[0]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # same per-sample seeds with or without workers
    centre = to_pixels(torch.cat(first[0]), cfg)[:, SIZE // 2, SIZE // 2, 0]
    np.testing.assert_array_equal(np.rint(centre), torch.cat(first[1]).numpy())


def test_pad_crop_shifts_within_pad_and_fills_zero():
    images, labels = coordinate_images(128)
    for backend in ("torch", "dali"):
        cfg = cfg_for(backend, augment="pad_crop", pad=4, hflip=0.0)
        x, _ = collect(build_pipeline(cfg, images, labels, train=True, batch_size=64, device=CPU, seed=2))
        px = to_pixels(torch.cat(x), cfg)
        centre_x = px[:, SIZE // 2, SIZE // 2, 1] / RAMP - SIZE // 2
        assert np.all(np.abs(np.rint(centre_x)) <= 4) and len(np.unique(np.rint(centre_x))) > 5
        shifted = np.rint(centre_x) > 0
        # a window shifted right reads past the right edge: the last column is zero padding
        assert np.allclose(px[shifted, SIZE // 2, -1, :], 0, atol=0.5), backend


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_train_shards_are_disjoint_equal_and_complete(world_size):
    count, batch = 200, 16
    images, _ = coordinate_images(count, 8)
    ids = np.arange(count, dtype=np.int64)
    cfg = cfg_for("torch", image_size=8)
    shards = []
    for rank in range(world_size):
        pipe = build_pipeline(cfg, images, ids, train=True, batch_size=batch, rank=rank, world_size=world_size, device=CPU, seed=9)
        pipe.set_epoch(4)
        got = torch.cat(collect(pipe)[1]).numpy()
        assert len(got) == pipe.num_samples == len(pipe) * batch
        shards.append(got)
    expected_per_rank = count // (world_size * batch) * batch
    assert all(len(s) == expected_per_rank for s in shards)
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union) == world_size * expected_per_rank
    # every rank used the same permutation: together the shards are its first world*per_rank entries
    one_rank = build_pipeline(cfg, images, ids, train=True, batch_size=batch * world_size, device=CPU, seed=9)
    one_rank.set_epoch(4)
    assert set(torch.cat(collect(one_rank)[1]).numpy()) == set(union)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_visits_every_sample_exactly_once(world_size):
    count, batch = 101, 16
    images, _ = coordinate_images(count, 8)
    ids = np.arange(count, dtype=np.int64)
    seen = []
    for rank in range(world_size):
        pipe = build_pipeline(cfg_for("torch", image_size=8), images, ids, train=False, batch_size=batch, rank=rank,
                              world_size=world_size, device=CPU)
        got = torch.cat(collect(pipe)[1]).numpy()
        assert len(got) == pipe.num_samples and len(collect(pipe)[1]) == len(pipe)
        seen.append(got)
    assert sorted(np.concatenate(seen).tolist()) == list(range(count))


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_every_backend_follows_the_same_shard_plan(backend):
    images, _ = coordinate_images(100, 8)
    ids = np.arange(100, dtype=np.int64)
    for train in (True, False):
        kw = dict(train=train, batch_size=16, rank=1, world_size=3, device=CPU, seed=4)
        fast = collect(build_pipeline(cfg_for("torch", image_size=8), images, ids, **kw))[1]
        other = collect(build_pipeline(cfg_for(backend, image_size=8), images, ids, **kw))[1]
        assert [b.tolist() for b in fast] == [b.tolist() for b in other]


def test_epochs_differ_and_repeat_for_the_same_seed():
    images, ids = coordinate_images(64, 8)[0], np.arange(64)
    pipe = build_pipeline(cfg_for("torch", image_size=8), images, ids, train=True, batch_size=16, device=CPU, seed=0)
    order = lambda e: (pipe.set_epoch(e), torch.cat(collect(pipe)[1]).tolist())[1]
    assert order(0) != order(1)
    assert order(1) == order(1)
    assert torch.cat(collect(pipe)[1]).tolist() == order(2)  # a finished epoch moves on by itself


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch_yields_the_same_remaining_batches(backend):
    images, labels = coordinate_images(160, 32)
    cfg = cfg_for(backend, image_size=32)
    kw = dict(train=True, batch_size=32, device=CPU, seed=11)
    original = build_pipeline(cfg, images, labels, **kw)
    original.set_epoch(2)
    stream = iter(original)
    for _ in range(2):
        next(stream)
    state = original.state_dict()
    assert state == {"epoch": 2, "position": 2} and all(type(v) is int for v in state.values())
    rest = [(x.clone(), y.clone()) for x, y in stream]

    restored = build_pipeline(cfg, images, labels, **kw)
    restored.load_state_dict(state)
    restored.set_epoch(2)  # a trainer calling set_epoch for the resumed epoch must not rewind it
    again = collect(restored)
    assert len(again[0]) == len(rest) == 3
    for (x, y), x2, y2 in zip(rest, *again):
        torch.testing.assert_close(x2, x, atol=0, rtol=0)
        assert torch.equal(y2, y)


def test_eval_tensors_agree_across_backends_within_one_level():
    images = np.random.default_rng(0).integers(0, 256, (70, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(70)
    outputs = {}
    for backend in BACKENDS:
        cfg = cfg_for(backend)
        xs, ys = collect(build_pipeline(cfg, images, labels, train=False, batch_size=32, device=CPU))
        assert [len(y) for y in ys] == [32, 32, 6]
        outputs[backend] = to_pixels(torch.cat(xs), cfg)
    np.testing.assert_allclose(outputs["reference"], images.astype(np.float64), atol=1e-3)
    for backend in ("torch", "dali"):
        assert np.max(np.abs(outputs[backend] - outputs["reference"])) <= 1.0, backend


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_reduced_precision_output(backend, dtype):
    images, labels = coordinate_images(64, 32)
    pipe = build_pipeline(cfg_for(backend, image_size=32, output_dtype=dtype), images, labels, train=True, batch_size=32, device=CPU)
    x, _ = next(iter(pipe))
    assert x.dtype == getattr(torch, dtype) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(x.float()).all()


def test_dali_cpu_only_mode_matches_torch_crops():
    """Both fast backends consume the same host-sampled windows, so their train outputs nearly coincide."""
    images, labels = coordinate_images(128)
    out = {}
    for backend in ("torch", "dali"):
        pipe = build_pipeline(cfg_for(backend), images, labels, train=True, batch_size=64, device=CPU, seed=8)
        assert pipe.backend == backend
        out[backend] = torch.cat(collect(pipe)[0])
    # ramps have 4 levels per pixel; interpolation at window edges may differ by about one pixel step
    diff = (out["torch"] - out["dali"]).abs() * 0.2265 * 255
    assert diff.median() < 0.5 and diff.max() < 8


def test_torch_host_staging_path_matches_resident_path():
    images, labels = coordinate_images(96, 32)
    kw = dict(train=True, batch_size=32, device=CPU, seed=6)
    cfg = cfg_for("torch", image_size=32)
    resident = collect(build_pipeline(cfg, images, labels, **kw))
    staged_pipe = build_pipeline(cfg, images, labels, **kw)
    staged_pipe.resident = False  # what a split over data.device_memory_cap_gb does on CUDA
    staged = collect(staged_pipe)
    for a, b in zip(resident[0], staged[0]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_read_only_memmap_input(tmp_path):
    images, labels = coordinate_images(64, 16)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    for backend in ("torch", "dali"):
        x, y = next(iter(build_pipeline(cfg_for(backend, image_size=16), mapped, labels, train=True, batch_size=16, device=CPU)))
        assert x.shape == (16, 3, 16, 16)


def test_resolve_backend_auto_and_explicit(monkeypatch):
    backend, reason = resolve_backend("auto", CPU)
    assert backend in ("torch", "dali") and "auto" in reason
    assert resolve_backend("reference", CPU)[0] == "reference"
    monkeypatch.setattr(backend_choice, "dali_importable", lambda: False)
    with pytest.raises(UserError, match="DALI requested but not installed: pip install nvidia-dali-cuda130"):
        resolve_backend("dali", CPU)
    with pytest.raises(UserError, match="unknown data.backend"):
        resolve_backend("fastest", CPU)


def test_user_errors_for_bad_inputs_and_state():
    images, labels = coordinate_images(32, 16)
    with pytest.raises(UserError, match="data.image_size is 64"):
        build_pipeline(DataConfig(backend="torch"), images, labels, train=True, batch_size=8, device=CPU)
    pipe = build_pipeline(cfg_for("torch", image_size=16), images, labels, train=True, batch_size=8, device=CPU)
    with pytest.raises(UserError, match="does not fit this pipeline"):
        pipe.load_state_dict({"epoch": 0, "position": 99})


def test_loader_benchmark_reports_every_backend_beside_a_plain_dataloader(tmp_path):
    from kernels_bench.suites import loader

    parser = argparse.ArgumentParser()
    loader.add_arguments(parser)
    args = parser.parse_args(["--batch-size", "32", "--image-size", "32", "--batches", "4",
                              "--backends", "plain_dataloader,reference,torch,dali"])
    args.device, args.quick, args.smoke, args.json, args.md = "cpu", True, False, None, None
    result = loader.run(args)
    assert result["suite"] == "loader" and result["device"] == "cpu"
    expected = {"plain_dataloader", "reference", "torch"} | ({"dali"} if backend_choice.dali_importable() else set())
    assert set(result["backends"]) == expected
    plain = result["backends"]["plain_dataloader"]
    assert plain["ratio_vs_plain_dataloader"] == 1.0 and result["backends"]["reference"]["ratio_vs_reference"] == 1.0
    for stats in result["backends"].values():
        assert stats["images_per_s"] > 0 and stats["steady_batches"] == 4 and stats["pass_start_s"] > 0
        assert stats["ratio_vs_plain_dataloader"] == pytest.approx(stats["images_per_s"] / plain["images_per_s"], abs=0.01)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_gpu_backends_yield_channels_last_cuda_batches(backend):
    images, labels = coordinate_images(256)
    cuda = torch.device("cuda")
    pipe = build_pipeline(cfg_for(backend, output_dtype="bfloat16"), images, labels, train=True, batch_size=64, device=cuda)
    for x, y in pipe:
        assert x.is_cuda and y.is_cuda and x.dtype == torch.bfloat16
        assert x.is_contiguous(memory_format=torch.channels_last)
        centre = to_pixels(x.float().cpu(), pipe.cfg)[:, SIZE // 2, SIZE // 2, 0]
        np.testing.assert_array_equal(np.rint(centre), y.cpu().numpy())


@pytest.mark.gpu
def test_gpu_outputs_match_cpu_outputs():
    images, labels = coordinate_images(128)
    for backend in ("torch", "dali"):
        kw = dict(train=True, batch_size=64, seed=1)
        cpu = torch.cat(collect(build_pipeline(cfg_for(backend), images, labels, device=CPU, **kw))[0])
        gpu = torch.cat([x.cpu() for x, _ in build_pipeline(cfg_for(backend), images, labels, device=torch.device("cuda"), **kw)])
        assert (cpu - gpu).abs().max() < 0.05, backend


@pytest.mark.parametrize("augment", ["rrc", "pad_crop", "none"])
def test_torch_backend_host_to_device_copies_per_pass_do_not_grow_with_batches(augment):
    """The torch backend moves a pass's plan (indices, labels, crop windows + flips) in a fixed number of copies:
    on CUDA every per-batch copy from pageable memory would make the host wait for the device."""
    images, labels = coordinate_images(256, 32)
    per_pass = {}
    for batch_size in (128, 16):  # 2 and 16 batches per pass
        pipe = build_pipeline(cfg_for("torch", image_size=32, augment=augment), images, labels, train=True,
                              batch_size=batch_size, device=CPU, seed=1)
        before = pipe.transfers
        assert len(collect(pipe)[0]) == 256 // batch_size
        per_pass[batch_size] = pipe.transfers - before
    assert per_pass[128] == per_pass[16] == (3 if augment != "none" else 2)


def test_torch_backend_resume_moves_only_the_rest_of_the_pass():
    images, labels = coordinate_images(256, 32)
    pipe = build_pipeline(cfg_for("torch", image_size=32), images, labels, train=True, batch_size=16, device=CPU, seed=1)
    pipe.load_state_dict({"epoch": 0, "position": 10})
    before = pipe.transfers
    assert len(collect(pipe)[0]) == 6 and pipe.transfers - before == 3


def test_torch_non_resident_path_equals_the_resident_path_bit_for_bit():
    """A split over data.device_memory_cap_gb (here 0) is gathered on the host by worker threads, two batches ahead;
    its batches, a mid-epoch resume and a pass abandoned midway must all give the resident path's exact bytes."""
    import dataclasses

    images, labels = coordinate_images(200, 32)
    kw = dict(train=True, batch_size=24, device=CPU, seed=6)
    for augment in ("rrc", "pad_crop", "none"):
        cfg = cfg_for("torch", image_size=32, augment=augment)
        resident_pipe = build_pipeline(cfg, images, labels, **kw)
        staged_pipe = build_pipeline(dataclasses.replace(cfg, device_memory_cap_gb=0.0), images, labels, **kw)
        assert resident_pipe.resident and not staged_pipe.resident
        for epoch in (0, 1):
            resident_pipe.set_epoch(epoch)
            staged_pipe.set_epoch(epoch)
            expected, got = collect(resident_pipe), collect(staged_pipe)
            assert len(got[0]) == len(expected[0]) == 200 // 24
            for a, b in zip(expected[0] + expected[1], got[0] + got[1]):
                assert a.dtype == b.dtype and torch.equal(a, b)
        resident_pipe.set_epoch(2)
        expected_x, expected_y = collect(resident_pipe)
        staged_pipe.set_epoch(2)
        for _ in zip(range(3), staged_pipe):  # abandon the pass after 3 batches
            pass
        staged_pipe.load_state_dict({"epoch": 2, "position": 2})
        got_x, got_y = collect(staged_pipe)
        assert len(got_x) == len(expected_x) - 2
        for a, b in zip(expected_x[2:] + expected_y[2:], got_x + got_y):
            assert a.dtype == b.dtype and torch.equal(a, b)
