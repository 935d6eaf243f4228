"""Strong augmentation: DALI auto_aug policies, random erasing, progressive resizing — exact resume, no silent no-ops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision import transforms

from fasttrain.config import DataConfig
from fasttrain.data.pipelines import build_pipeline
from fasttrain.data.pipelines.backend_choice import dali_importable
from fasttrain.data.pipelines.augment import Purpose, batch_rng, epoch_image_size, sample_erase_boxes, schedule_sizes
from fasttrain.data.pipelines.batch_ops import erase
from fasttrain.errors import UserError

needs_dali = pytest.mark.skipif(not dali_importable(), reason="needs nvidia-dali")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """Real pictures (scikit-learn's digits, upscaled to 32 px RGB) so policies such as equalize see real content."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = torch.from_numpy(digits.images[:320] * (255.0 / 16.0)).float()[:, None]
    big = torch.nn.functional.interpolate(gray, size=(32, 32), mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    return big[:, 0, :, :, None].expand(-1, -1, -1, 3).contiguous().numpy(), digits.target[:320].astype(np.int64)


def pipeline(images, cfg: DataConfig, *, train: bool = True, batch_size: int = 32):
    return build_pipeline(cfg, images[0], images[1], train=train, batch_size=batch_size, device=CPU, seed=7)


def epoch_batches(pipe, epoch: int, state: dict | None = None) -> list[torch.Tensor]:
    if state is not None:
        pipe.load_state_dict(state)
    else:
        pipe.set_epoch(epoch)
    return [x.clone() for x, _ in pipe]


@needs_dali
@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_dali_policy_changes_images_and_resumes_exactly_mid_epoch(images, policy):
    cfg = DataConfig(image_size=32, backend="dali", augment=policy, randaugment_n=3, randaugment_m=15)
    full = epoch_batches(pipeline(images, cfg), 1)
    assert all(torch.equal(a, b) for a, b in zip(full, epoch_batches(pipeline(images, cfg), 1)))
    resumed = epoch_batches(pipeline(images, cfg), 1, state={"epoch": 1, "position": 6})
    assert len(resumed) == len(full) - 6
    assert all(torch.equal(a, b) for a, b in zip(full[6:], resumed))
    # the same crops and flips without the policy: most images differ, so the policy really ran
    plain = epoch_batches(pipeline(images, dataclasses.replace(cfg, augment="rrc")), 1)
    changed = torch.stack([(a - b).abs().flatten(1).amax(1) > 1e-3 for a, b in zip(full, plain)]).float().mean()
    assert changed > 0.5
    # another epoch draws other operations
    assert not torch.equal(full[0], epoch_batches(pipeline(images, cfg), 2)[0])


def test_torch_backend_refuses_policies_naming_dali(images):
    for policy in ("randaugment", "trivialaugment"):
        with pytest.raises(UserError, match='runs in the dali and reference backends only.*data.backend = "dali"'):
            pipeline(images, DataConfig(image_size=32, backend="torch", augment=policy))
        # data.backend = "auto" resolves to torch on CUDA: the same error, not a run without the policy
        with pytest.raises(UserError, match='data.backend = "dali"'):
            build_pipeline(DataConfig(image_size=32, augment=policy), images[0], images[1], train=True, batch_size=32,
                           device=CPU, backend="torch")
        # evaluation never augments: a policy-trained run evaluates on any backend
        eval_pipe = build_pipeline(DataConfig(image_size=32, augment=policy), images[0], images[1], train=False,
                                   batch_size=32, device=CPU, backend="torch")
        assert next(iter(eval_pipe))[0].shape == (32, 3, 32, 32)


def test_reference_backend_uses_torchvision_policies_and_erasing(images):
    for policy, cls in (("randaugment", transforms.RandAugment), ("trivialaugment", transforms.TrivialAugmentWide)):
        pipe = pipeline(images, DataConfig(image_size=32, backend="reference", augment=policy, erasing=0.5,
                                           randaugment_n=3, randaugment_m=12, loader_workers=0))
        steps = pipe.loader.dataset.transform.transforms
        inner = steps[0].transforms
        found = [t for t in inner if isinstance(t, cls)]
        assert len(found) == 1 and isinstance(steps[-1], transforms.RandomErasing) and steps[-1].p == 0.5
        if policy == "randaugment":
            assert (found[0].num_ops, found[0].magnitude) == (3, 12)
        assert next(iter(pipe))[0].shape == (32, 3, 32, 32)
    eval_pipe = pipeline(images, DataConfig(image_size=32, backend="reference", augment="randaugment", erasing=0.5,
                                            loader_workers=0), train=False)
    assert not any(isinstance(t, transforms.RandomErasing) for t in eval_pipe.loader.dataset.transform.transforms)


def test_erase_boxes_follow_torchvision_rule_and_are_a_function_of_the_batch():
    boxes = sample_erase_boxes(batch_rng(1, 2, 0, 1, 3, Purpose.ERASE), 4000, 32, 32, probability=0.5)
    again = sample_erase_boxes(batch_rng(1, 2, 0, 1, 3, Purpose.ERASE), 4000, 32, 32, probability=0.5)
    other = sample_erase_boxes(batch_rng(1, 2, 0, 1, 4, Purpose.ERASE), 4000, 32, 32, probability=0.5)
    assert np.array_equal(boxes.top, again.top) and np.array_equal(boxes.height, again.height)
    assert not np.array_equal(boxes.height, other.height)
    erased = boxes.height > 0
    assert 0.45 < erased.mean() < 0.55
    share = (boxes.height * boxes.width)[erased] / (32 * 32)
    assert share.min() > 0.01 and share.max() < 0.35
    assert (boxes.top + boxes.height <= 32).all() and (boxes.left + boxes.width <= 32).all() and (boxes.top >= 0).all()


def test_erase_zeroes_exactly_the_boxes():
    images = torch.ones(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    from fasttrain.data.pipelines.augment import EraseBoxes

    boxes = EraseBoxes(np.array([1, 0, 5]), np.array([2, 0, 0]), np.array([3, 0, 2]), np.array([4, 0, 8]))
    out = erase(images, boxes)
    assert out[0, :, 1:4, 2:6].eq(0).all() and out[0].eq(0).sum() == 3 * 12
    assert out[1].eq(1).all()
    assert out[2, :, 5:7].eq(0).all() and out[2].eq(0).sum() == 3 * 16


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_fast_backends_erase_on_device_and_resume_exactly(images, backend):
    cfg = DataConfig(image_size=32, backend=backend, augment="pad_crop", erasing=1.0)
    full = epoch_batches(pipeline(images, cfg), 0)
    plain = epoch_batches(pipeline(images, dataclasses.replace(cfg, erasing=0.0)), 0)
    differs = torch.cat([(a != b).flatten(1).any(1) for a, b in zip(full, plain)])
    assert differs.float().mean() > 0.9  # p = 1: every image whose box fits got a box
    resumed = epoch_batches(pipeline(images, cfg), 0, state={"epoch": 0, "position": 3})
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed))
    eval_batch = next(iter(pipeline(images, cfg, train=False)))[0]
    assert torch.equal(eval_batch, next(iter(pipeline(images, dataclasses.replace(cfg, erasing=0.0), train=False)))[0])


def test_progressive_sizes_are_few_fixed_multiples_and_reach_full_size():
    cfg = DataConfig(image_size=64, progressive_start_size=32, progressive_start_epoch=2, progressive_end_epoch=10,
                     progressive_step=8)
    sizes = [epoch_image_size(cfg, e) for e in range(12)]
    assert sizes[:3] == [32, 32, 32] and sizes[10:] == [64, 64]
    assert sizes == sorted(sizes) and all(s % 8 == 0 for s in sizes)
    assert schedule_sizes(cfg, 12) == [32, 40, 48, 56, 64]
    assert schedule_sizes(DataConfig(image_size=64), 12) == [64]


@pytest.mark.parametrize("backend", ["torch", "reference", pytest.param("dali", marks=needs_dali)])
def test_progressive_resizing_trains_small_and_evaluates_full(images, backend):
    cfg = DataConfig(image_size=32, backend=backend, loader_workers=0, progressive_start_size=16,
                     progressive_end_epoch=2, progressive_step=8)
    pipe = pipeline(images, cfg)
    shapes = []
    for epoch in range(3):
        pipe.set_epoch(epoch)
        batch = next(iter(pipe))[0]
        shapes.append(tuple(batch.shape[2:]))
        assert batch.is_contiguous(memory_format=torch.channels_last)
    assert shapes == [(16, 16), (24, 24), (32, 32)]
    assert next(iter(pipeline(images, cfg, train=False)))[0].shape[2:] == (32, 32)


def test_flip_tta_averages_the_logits_of_image_and_mirror():
    from fasttrain.engine.evaluate import tta_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    images = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    expected = (model(images) + model(torch.flip(images, dims=[3]))) / 2
    assert torch.allclose(tta_logits(model, images, "flip"), expected)
    assert torch.equal(tta_logits(model, images, "none"), model(images))
    assert not torch.allclose(expected, model(images))


def test_erase_moves_its_boxes_to_the_device_in_one_copy_per_batch():
    """A host→device copy from pageable memory makes the host wait on CUDA: the boxes of a batch travel together.
    Counted on the meta device, where every .to(device) is a real dispatched copy (on CPU it is a no-op)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fasttrain.data.pipelines.augment import EraseBoxes

    class CountCopies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.to_meta = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            source = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default) and source is not None:
                target = out if func is torch.ops.aten._to_copy.default else args[0]
                moved_from = source if func is torch.ops.aten._to_copy.default else args[1]
                self.to_meta += moved_from.device.type == "cpu" and target.device.type == "meta"
            return out

    images = torch.empty(5, 3, 8, 8, device="meta")
    boxes = EraseBoxes(*(np.arange(5, dtype=np.int64) for _ in range(4)))
    with CountCopies() as counter:
        out = erase(images, boxes)
    assert out.shape == images.shape and counter.to_meta == 1


@needs_dali
def test_dali_policy_epoch_prints_no_deprecation_warning(images, capfd):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for policy in ("randaugment", "trivialaugment"):
            epoch_batches(pipeline(images, DataConfig(image_size=32, backend="dali", augment=policy)), 0)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning) or "deprecated" in str(w.message)]
    printed = capfd.readouterr()
    assert "deprecated" not in printed.err + printed.out
