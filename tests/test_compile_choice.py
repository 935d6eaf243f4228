"""compile.mode: "auto" (the default) compiles on CUDA only, says why; explicit modes apply everywhere."""

import pytest
import torch

from fasttrain.config import CompileConfig, load_config
from fasttrain.engine.runtime import compile_kwargs, resolve_compile


def test_auto_is_the_default_and_is_off_on_cpu_with_the_reason():
    assert CompileConfig().mode == "auto" and load_config(None).compile.mode == "auto"
    mode, why = resolve_compile("auto", torch.device("cpu"))
    assert mode == "off" and "off on CPU" in why


def test_auto_compiles_on_cuda():
    mode, why = resolve_compile("auto", torch.device("cuda"))  # no GPU needed to decide
    assert mode == "default" and "compiled on CUDA" in why


@pytest.mark.parametrize("mode", ["off", "default", "max-autotune"])
def test_explicit_modes_apply_on_every_device(mode):
    for device in ("cpu", "cuda"):
        assert resolve_compile(mode, torch.device(device))[0] == mode


def test_torch_compile_arguments():
    assert compile_kwargs("default") == {"dynamic": False}
    assert compile_kwargs("max-autotune") == {"mode": "max-autotune", "dynamic": False}


def test_each_progressive_size_gets_a_static_graph():
    """Three train sizes compile to three graphs without symbolic sizes (the default would turn the second dynamic)."""
    dynamic_graphs = []

    def recording_backend(graph_module, example_inputs):
        values = [node.meta.get("example_value") for node in graph_module.graph.nodes if node.op == "placeholder"]
        dims = [d for v in values if v is not None for d in (v.shape if isinstance(v, torch.Tensor) else [v])]
        dynamic_graphs.append(any(isinstance(d, torch.SymInt) for d in dims))
        return graph_module.forward

    torch.compiler.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    compiled = torch.compile(model, backend=recording_backend, **compile_kwargs("default"))
    for size in (16, 24, 32):
        compiled(torch.randn(2, 3, size, size))
    assert dynamic_graphs == [False, False, False]


def test_unknown_mode_is_a_config_error():
    from fasttrain.config import ConfigError

    with pytest.raises(ConfigError, match=r"\[compile\] mode must be one of .auto., .off."):
        load_config(None, ['compile.mode="reduce-overhead"'])


def test_eval_feeds_the_model_one_shape_and_counts_every_sample_once():
    """A split of 10 in batches of 4 (4, 4, 2): the last batch is padded for the model, scored on its 2 samples."""
    from fasttrain.engine.distributed import DistInfo
    from fasttrain.engine.evaluate import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(6))
    images, labels = torch.randn(10, 3, 8, 8).contiguous(memory_format=torch.channels_last), torch.arange(10) % 6
    batches = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 10, 4)]
    model(images[:2]), model.eval()
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    scores = evaluate(model, batches, info, "off")
    assert shapes == [(4, 3, 8, 8)] * 3 and scores["count"] == 10
    with torch.no_grad():
        logits = model(images)
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert scores["loss"] == pytest.approx(expected, rel=1e-5)
    assert scores["top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
