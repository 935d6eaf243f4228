"""Entry point: `python -m fasttrain --cfg configs/X.toml` trains; subcommands eval, predict and export use its checkpoints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from fasttrain.errors import OneLineArgumentParser, UserError, did_you_mean, run_cli

COMMANDS = {
    "train": "train a model (the default: `python -m fasttrain --cfg X` is `python -m fasttrain train --cfg X`)",
    "eval": "top-1/top-5 of a saved checkpoint, optionally a per-class report",
    "predict": "classify image files or folders with a checkpoint or an exported bundle",
    "export": "write a trained model as safetensors, torch.export (.pt2) or ONNX, checked against the eager model",
}


def _dotted_overrides(extra: list[str]) -> list[str]:
    """`--train.epochs=3` and `--train.epochs 3` are the same as `--set train.epochs=3`."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise UserError(f"unrecognized argument '{arg}' (see python -m fasttrain --help)")
        if "=" in arg:
            out.append(arg[2:])
        elif i + 1 < len(extra):
            out.append(f"{arg[2:]}={extra[i + 1]}")
            i += 1
        else:
            raise UserError(f"override '{arg}' needs a value, e.g. {arg}=3")
        i += 1
    return out


def train_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<9}{what}" for name, what in COMMANDS.items())
    p = OneLineArgumentParser(prog="python -m fasttrain", formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Train an image classifier from a TOML config.",
                              epilog=f"commands (`python -m fasttrain COMMAND --help` for each):\n{commands}")
    p.add_argument("--cfg", required=True, help="experiment config, e.g. configs/quickstart.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (a TOML literal); repeatable; --section.key=value works too")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", help="'auto' (newest complete checkpoint in the run directory) or a checkpoint path")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


def quiet_openmp_on_a_busy_machine(log=print) -> None:
    """When the 1-minute load already exceeds the usable cores, OpenMP threads that spin while they wait fight the
    other work for the cores (training 6-10x slower was seen). Say so in one line; unless the user set
    OMP_WAIT_POLICY, make them sleep instead (PASSIVE) — which takes effect only if torch is not imported yet."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load <= cores:
        return
    busy = f"busy machine: 1-minute load {load:.1f} on {cores} usable cores"
    policy = os.environ.get("OMP_WAIT_POLICY")
    if policy is not None:
        if policy.upper() == "PASSIVE":
            log(f"{busy}; OMP_WAIT_POLICY=PASSIVE is set, so OpenMP threads sleep while they wait")
        else:
            log(f"{busy}; OMP_WAIT_POLICY={policy} makes OpenMP threads spin while they wait, which can slow "
                f"training several times here: set OMP_WAIT_POLICY=PASSIVE")
    elif "torch" in sys.modules:
        log(f"{busy}; OpenMP threads spin while they wait, which can slow training several times here: "
            f"start with OMP_WAIT_POLICY=PASSIVE")
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log(f"{busy}; OpenMP threads will sleep while they wait (OMP_WAIT_POLICY=PASSIVE set for this run; "
            f"set OMP_WAIT_POLICY=ACTIVE to have them spin)")


def resume_command(argv: list[str]) -> str:
    """The command that continues a run started with `argv` (train arguments): the same, with --resume auto."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the same torchrun command with --resume auto"
    return shlex.join(["python", "-m", "fasttrain", *kept, "--resume", "auto"])


def train_main(argv: list[str]) -> int:
    from fasttrain.config import load_config, to_toml

    args, extra = train_parser().parse_known_args(argv)
    cfg = load_config(args.cfg, args.set + _dotted_overrides(extra))
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    quiet_openmp_on_a_busy_machine(log=print if os.environ.get("RANK", "0") == "0" else (lambda msg: None))
    from fasttrain.engine.launch import run_training
    from fasttrain.engine.trainer import TrainingInterrupted

    cfg_name = Path(args.cfg).stem
    out = Path(args.out) if args.out else Path("runs") / cfg_name
    try:
        run_training(cfg, cfg_name=cfg_name, run_dir=out, resume=args.resume)
    except TrainingInterrupted as stop:
        if os.environ.get("RANK", "0") == "0":
            print(f"interrupted at step {stop.step}; checkpoint {stop.checkpoint} written; continue with: "
                  f"{resume_command(argv)}", file=sys.stderr, flush=True)
        return 130
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m fasttrain eval",
                              description="Loss, top-1 and top-5 of a trained model on a split of the data it was trained on.")
    p.add_argument("--ckpt", required=True,
                   help="best_model.pt, a checkpoints/ckpt_*.pt file or an exported .safetensors bundle")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--data", metavar="CACHE_DIR",
                   help="the data cache to evaluate on (default: the one named in the model card, where training read it)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta", choices=["none", "flip"], help="test-time augmentation (default: the run's [eval] tta, "
                                                           "kept in the model card)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--report", metavar="DIR", help="also write per-class top-1, confused pairs and PNGs into DIR")
    p.add_argument("--run-dir", help="for a checkpoint written before checkpoints carried their model card: its run directory")
    p.add_argument("--ema", action="store_true", help="the EMA weights of a training checkpoint")
    p.add_argument("--debug", action="store_true")
    return p


def eval_main(argv: list[str]) -> int:
    from fasttrain.inference.evaluation import eval_command

    args = eval_parser().parse_args(argv)
    result = eval_command(args)
    if args.json:
        print(json.dumps(result))
        return 0
    detail = f"loss {result['loss']:.4f}  tta {result['tta']}"
    if args.report:
        detail += f" | report in {args.report} ({', '.join(result['files'].values())})"
    print(f"{result['model']} on {result['split']} ({result['count']} images): "
          f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  {detail}")
    return 0


_MESSAGES = logging.StreamHandler()
_MESSAGES.setFormatter(logging.Formatter("%(message)s"))


def show_logged_messages() -> None:
    """fasttrain.data logs what it does to the cache (reused; rebuilt, and which file failed its check;
    images skipped): show those lines on stdout like the trainer's own."""
    _MESSAGES.stream = sys.stdout  # the current stdout, also when main() runs more than once in a process
    logger = logging.getLogger("fasttrain")
    logger.setLevel(logging.INFO)
    if _MESSAGES not in logger.handlers:
        logger.addHandler(_MESSAGES)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_logged_messages()
    if argv and argv[0] == "eval":
        return eval_main(argv[1:])
    if argv and argv[0] == "predict":
        from fasttrain.inference.predict import predict_main

        return predict_main(argv[1:])
    if argv and argv[0] == "export":
        from fasttrain.inference.export import export_main

        return export_main(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    elif argv and not argv[0].startswith("-"):  # training takes no positional argument: a mistyped command
        raise UserError(f"unknown command '{argv[0]}'; {did_you_mean(argv[0], list(COMMANDS))}"
                        f"commands: {', '.join(COMMANDS)} (see python -m fasttrain --help)")
    return train_main(argv)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
