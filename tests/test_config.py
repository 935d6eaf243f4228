"""Config schema: every shipped config validates; typos, wrong types and bad ranges are one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from fasttrain.config import ConfigError, load_config, parse_override, to_toml, from_dict, to_dict
from fasttrain.engine.optim import batch_sizes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def test_configs_directory_has_every_study_experiment():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "vgg19_bn", "vgg19", "resnet18", "resnet34", "resnet50", "resnet50_noskip",
            "resnext50", "t2t_vit"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_validates_and_names_a_registered_model(path):
    from fasttrain.models import list_models, model_knobs

    cfg = load_config(path)
    assert cfg.model.name in list_models()
    accepted = model_knobs(cfg.model.name)
    assert set(cfg.model.knobs()) <= set(accepted)


def test_study_hyperparameters_are_the_studys():
    r18 = load_config(ROOT / "configs/resnet18.toml")
    assert (r18.optim.name, r18.optim.lr, r18.optim.momentum, r18.sched.name, r18.train.epochs, r18.train.batch_size) == (
        "sgd", 0.2, 0.9, "cosine", 100, 256)
    rx = load_config(ROOT / "configs/resnext50.toml")
    assert (rx.optim.lr, rx.train.batch_size) == (0.1, 128)
    vgg = load_config(ROOT / "configs/vgg19.toml")
    assert (vgg.optim.name, vgg.optim.lr, vgg.train.epochs, vgg.model.knobs()["norm"]) == ("adam", 5e-4, 200, "none")
    vit = load_config(ROOT / "configs/t2t_vit.toml")
    d = batch_sizes(vit, world_size=1, train_size=80000)
    assert d.lr == pytest.approx(5e-4 * 256 / 512)
    assert vit.sched.warmup_epochs == 10 and vit.train.label_smoothing == 0.1 and vit.model.knobs()["drop_path"] == 0.1


def test_config_files_hold_only_differences():
    for path in CONFIGS:
        lines = [l for l in path.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
        assert len(lines) <= 30, f"{path.name} repeats defaults ({len(lines)} lines)"


@pytest.mark.parametrize("text, fragment", [
    ("[trian]\nepochs = 1\n", "unknown section [trian]; did you mean 'train'?"),
    ("[train]\nepoch = 1\n", "unknown key 'epoch' in [train]; did you mean 'epochs'?"),
    ("[train]\nepochs = \"three\"\n", "[train] epochs must be an integer"),
    ("[train]\namp = \"bf17\"\n", "[train] amp must be one of 'auto', 'bf16', 'fp16', 'off'"),
    ("[optim]\nlr = -0.1\n", "[optim] lr must be a number > 0, got -0.1"),
    ("[train]\nbatch_size = 0\n", "[train] batch_size must be an integer >= 1, got 0"),
    ("[data]\nval_ratio = 1.0\n", "[data] val_ratio must be a number in (0, 1), got 1.0"),
    ("[train]\nepochs = 2\n[train]\nepochs = 3\n", "TOML syntax error"),
    ("[train\nepochs = 2\n", "line 1"),
    ("train = 3\n", "'train' must be a section"),
    ("[data]\nmean = [0.5, 0.5]\n", "[data] mean must be a list of 3 numbers"),
    ("[sched]\nname = \"step\"\n", "milestones must list at least one epoch"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_huge_and_deeply_nested_configs_are_refused(tmp_path):
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="over the"):
        load_config(huge)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(ConfigError):
        load_config(deep)


def test_overrides_are_toml_literals_checked_against_the_schema():
    # resnet34 takes quickstart's width and layers knobs (vgg11 would not: see test_model_knob_schema.py)
    cfg = load_config(ROOT / "configs/quickstart.toml", ["train.epochs=3", "model.name=resnet34", "data.crop_scale=[0.5, 1.0]",
                                                         "train.amp=\"bf16\""])
    assert cfg.train.epochs == 3 and cfg.model.name == "resnet34" and cfg.data.crop_scale == (0.5, 1.0)
    assert cfg.train.amp == "bf16"
    with pytest.raises(ConfigError, match="not a TOML literal"):
        parse_override("train.epochs=[1,")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("epochs=3")
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(ROOT / "configs/quickstart.toml", ["train.epochs=2.5"])


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(ROOT / "configs/t2t_vit.toml", ["train.epochs=17"])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    assert from_dict(to_dict(cfg), "x") == cfg


def test_global_batch_must_divide_by_world_size():
    cfg = load_config(ROOT / "configs/resnet18.toml")
    assert batch_sizes(cfg, world_size=8, train_size=80000).per_rank_batch == 32
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        batch_sizes(cfg, world_size=3, train_size=80000)


def test_validate_does_not_mutate():
    from fasttrain.config import validate

    cfg = load_config(ROOT / "configs/resnet50.toml")
    before = to_dict(cfg)
    validate(cfg)
    assert to_dict(cfg) == before


def test_cli_print_config_and_bad_override_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "fasttrain", "--cfg", "configs/resnet18.toml", "--print-config",
                         "--train.epochs=5"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "epochs = 5" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "fasttrain", "--cfg", "configs/resnet18.toml", "--set", "train.epoch=5"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "did you mean 'epochs'" in bad.stderr
    assert "Traceback" not in bad.stderr


# Out-of-range values per section, each given as a --set override on an empty config file. Written
# before the ranges moved from validate() onto the dataclass fields: every value here was refused then
# and must stay refused, as one line naming the file, the section and the key.
REFUSED = [
    ("data", "val_ratio", "0.0"), ("data", "val_ratio", "1.0"), ("data", "val_ratio", "-0.1"),
    ("data", "image_size", "7"), ("data", "image_size", "0"),
    ("data", "crop_scale", "[0.0, 1.0]"), ("data", "crop_scale", "[0.5, 1.1]"), ("data", "crop_scale", "[0.6, 0.5]"),
    ("data", "crop_ratio", "[0.0, 1.0]"), ("data", "crop_ratio", "[2.0, 1.0]"),
    ("data", "hflip", "-0.1"), ("data", "hflip", "1.5"),
    ("data", "std", "[0.2, 0.0, 0.2]"), ("data", "std", "[-0.2, 0.2, 0.2]"),
    ("data", "pad", "-1"), ("data", "synth_classes", "1"), ("data", "synth_per_class", "1"),
    ("data", "loader_workers", "-1"), ("data", "prepare_workers", "-1"),
    ("train", "epochs", "0"), ("train", "epochs", "-3"), ("train", "batch_size", "0"), ("train", "grad_accum", "0"),
    ("train", "grad_accum", "3"),  # does not divide the default batch of 256
    ("train", "label_smoothing", "1.0"), ("train", "label_smoothing", "-0.1"),
    ("train", "mixup", "-1.0"), ("train", "cutmix", "-0.5"), ("train", "mix_prob", "1.5"), ("train", "mix_prob", "-0.1"),
    ("train", "ema_decay", "0.0"), ("train", "ema_decay", "1.0"), ("train", "grad_clip", "-1.0"),
    ("train", "max_steps", "-1"), ("train", "eval_every_epochs", "0"),
    ("optim", "lr", "0.0"), ("optim", "lr", "-0.1"), ("optim", "weight_decay", "-1e-4"),
    ("optim", "momentum", "1.0"), ("optim", "momentum", "-0.1"), ("optim", "lr_reference_batch", "-1"),
    ("optim", "betas", "[1.0, 0.999]"), ("optim", "betas", "[0.9, -0.1]"),  # refused by torch's Adam only once training starts
    ("sched", "warmup_epochs", "-1.0"), ("sched", "warmup_epochs", "10.0"),  # not shorter than the 10 default epochs
    ("sched", "min_lr", "-0.1"), ("sched", "warmup_start_factor", "-0.5"), ("sched", "warmup_start_factor", "1.5"), ("sched", "gamma", "0.0"), ("sched", "gamma", "1.5"),
    ("sched", "milestones", "[5, 3]"), ("sched", "milestones", "[3, 3]"),
    ("log", "every_steps", "0"), ("ckpt", "every_epochs", "-1"), ("ckpt", "every_steps", "-1"), ("ckpt", "keep", "0"),
    ("dist", "timeout_s", "0"),
]


@pytest.mark.parametrize("section, key, value", REFUSED, ids=lambda v: str(v))
def test_out_of_range_values_are_refused_naming_file_section_and_key(tmp_path, section, key, value):
    path = tmp_path / "empty.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as err:
        load_config(path, [f"{section}.{key}={value}"])
    message = str(err.value)
    assert message.startswith(f"{path}: [{section}] ") and key in message and "\n" not in message


def test_cross_field_combinations_are_refused(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    for overrides, fragment in [
        (["optim.name=adam", "optim.nesterov=true"], "[optim] nesterov applies to optim.name = \"sgd\" only"),
        (["sched.name=step"], "[sched] milestones must list at least one epoch when sched.name = \"step\""),
        (["train.epochs=4", "sched.warmup_epochs=4"], "[sched] warmup_epochs (4.0) must be shorter than train.epochs (4)"),
        (["train.batch_size=10", "train.grad_accum=4"], "[train] grad_accum (4) must divide train.batch_size (10)"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(path, overrides)
        assert str(err.value) == f"{path}: {fragment}"


# The edges of each range that are allowed: a closed bound accepts the bound itself.
ACCEPTED = [
    ("data", "val_ratio", "0.999"), ("data", "image_size", "8"), ("data", "crop_scale", "[1.0, 1.0]"),
    ("data", "crop_scale", "[0.001, 0.001]"), ("data", "crop_ratio", "[5.0, 5.0]"), ("data", "hflip", "0.0"),
    ("data", "hflip", "1.0"), ("data", "pad", "0"), ("data", "synth_classes", "2"), ("data", "synth_per_class", "2"),
    ("data", "loader_workers", "0"), ("data", "prepare_workers", "0"),
    ("train", "epochs", "1"), ("train", "batch_size", "1"), ("train", "grad_accum", "256"),
    ("train", "label_smoothing", "0.0"), ("train", "mixup", "0.0"), ("train", "mix_prob", "0.0"),
    ("train", "mix_prob", "1.0"), ("train", "ema_decay", "0.5"), ("train", "grad_clip", "0.0"), ("train", "max_steps", "0"),
    ("train", "eval_every_epochs", "1"), ("optim", "lr", "1e-9"), ("optim", "weight_decay", "0.0"),
    ("optim", "momentum", "0.0"), ("optim", "lr_reference_batch", "0"), ("optim", "betas", "[0.0, 0.0]"), ("sched", "warmup_epochs", "9.5"),
    ("sched", "min_lr", "0.0"), ("sched", "gamma", "1.0"), ("sched", "milestones", "[]"), ("log", "every_steps", "1"),
    ("ckpt", "every_epochs", "0"), ("ckpt", "every_steps", "0"), ("ckpt", "keep", "1"), ("dist", "timeout_s", "1"),
]


@pytest.mark.parametrize("section, key, value", ACCEPTED, ids=lambda v: str(v))
def test_values_at_the_edge_of_a_range_are_accepted(tmp_path, section, key, value):
    path = tmp_path / "empty.toml"
    path.write_text("")
    cfg = load_config(path, [f"{section}.{key}={value}"])
    assert to_dict(cfg)[section][key] == parse_override(f"{section}.{key}={value}")[2]
