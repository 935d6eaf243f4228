"""What `compile.mode` means on the device at hand: "auto" compiles on CUDA and not on CPU, with the reason."""

from __future__ import annotations

import torch


def resolve_compile(requested: str, device: torch.device) -> tuple[str, str]:
    """(mode, why): mode is "off", "default" or "max-autotune"; `why` is the line the trainer logs."""
    if requested != "auto":
        return requested, f"compile.mode = {requested!r}"
    if torch.device(device).type == "cuda":
        return "default", "compile.mode auto: compiled on CUDA (torch.compile's default mode)"
    return "off", ("compile.mode auto: off on CPU (compiling takes minutes per graph there; "
                   "set compile.mode = \"default\" to compile anyway)")


def compile_kwargs(mode: str) -> dict:
    """torch.compile's arguments for a resolved mode other than "off"."""
    return {} if mode == "default" else {"mode": mode}
