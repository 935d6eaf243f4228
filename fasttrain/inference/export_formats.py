"""The three export formats: write an artifact from a model, and load it back as a function of a batch for the check.

Each writer takes the network to ship (pixels or normalized floats in, logits out), an example batch, the card
as JSON text and the path to write; each loader returns `run(batch: np.ndarray) -> np.ndarray` of logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fasttrain.errors import UserError

FORMATS = ("safetensors", "export", "onnx")
SUFFIXES = {"safetensors": ".safetensors", "export": ".pt2", "onnx": ".onnx"}
CARD_FILE = "fasttrain_card.json"  # inside a .pt2 archive's extra files
ONNX_CARD_KEY = "fasttrain.card"
EXPORT_EXTRA = "pip install 'fasttrain[export]'"
MAX_BATCH = 1 << 16

Runner = Callable[[np.ndarray], np.ndarray]


def _batch_dim() -> dict:
    return {"inputs": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}


def require_onnx() -> None:
    """One line naming the extra when the ONNX exporter's packages are missing."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs the optional package{'s' if len(missing) > 1 else ''} "
                        f"{' and '.join(missing)}: {EXPORT_EXTRA}")


# --- safetensors: the weights, the check images and the card in one file ----------------------------------------

def write_safetensors(state: dict[str, torch.Tensor], check_images: torch.Tensor, card_text: str, path: Path) -> None:
    from safetensors.torch import save_file

    from fasttrain.inference.loaded import BUNDLE_CARD_KEY, BUNDLE_CHECK_IMAGES

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tensors[BUNDLE_CHECK_IMAGES] = check_images.contiguous()
    save_file(tensors, str(path), metadata={BUNDLE_CARD_KEY: card_text})


def load_safetensors(path: Path, float_input: bool) -> Runner:
    from fasttrain.inference.loaded import open_model

    loaded = open_model(path)
    net = loaded.module if float_input else loaded.pixels_to_logits()
    return torch_runner(net)


# --- torch.export: a program with a dynamic batch -------------------------------------------------------------

class _Inputs(torch.nn.Module):
    """Names the program's one input `inputs` (the name dynamic_shapes refers to)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)


def _exported_program(net: torch.nn.Module, example: torch.Tensor):
    try:
        return torch.export.export(_Inputs(net).eval(), (example,), dynamic_shapes=_batch_dim())
    except Exception as err:  # the model's code cannot be traced with a free batch size
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"torch.export could not trace this model with a dynamic batch ({first[:200]})") from None


def write_export(net: torch.nn.Module, example: torch.Tensor, card_text: str, path: Path) -> None:
    torch.export.save(_exported_program(net, example), str(path), extra_files={CARD_FILE: card_text})


def load_export(path: Path, float_input: bool) -> Runner:
    # The program was written by this process a moment ago (torch.export.load unpickles: never a foreign file).
    program = torch.export.load(str(path)).module()
    return torch_runner(program)


# --- ONNX: torch.onnx.export(dynamo=True), checked with onnxruntime ---------------------------------------------

def write_onnx(net: torch.nn.Module, example: torch.Tensor, card_text: str, path: Path) -> None:
    require_onnx()
    try:
        program = torch.onnx.export(_Inputs(net).eval(), (example,), dynamo=True, input_names=["inputs"],
                                    output_names=["logits"], dynamic_shapes=_batch_dim(), verbose=False)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"torch.onnx.export failed for this model ({first[:200]})") from None
    program.model.metadata_props[ONNX_CARD_KEY] = card_text
    program.save(str(path))


def load_onnx(path: Path, float_input: bool) -> Runner:
    try:
        import onnxruntime
    except ImportError:
        # Without onnxruntime the check still runs, on the onnx package's reference evaluator (slower).
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(path))
        return lambda batch: np.asarray(evaluator.run(None, {"inputs": batch})[0])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"inputs": batch})[0]


def torch_runner(net) -> Runner:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).float().numpy()
    return run


LOADERS = {"safetensors": load_safetensors, "export": load_export, "onnx": load_onnx}
