"""Model knobs typed once: a [model] table, a --set override and create_model are all checked against the builder's signature."""

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import torch.nn as nn

from fasttrain.config import ConfigError, from_dict, load_config, to_dict, to_toml
from fasttrain.models import (
    InvalidKnobValueError,
    UnknownKnobError,
    UnknownModelError,
    check_knobs,
    list_models,
    model_knobs,
    register_model,
)
from fasttrain.models import registry
from fasttrain.schema import Range

ROOT = Path(__file__).resolve().parents[1]


def model_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text("[model]\n" + body)
    return path


def refusal(path: Path, overrides: list[str] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path, list(overrides))
    message = str(caught.value)
    assert str(path) in message and "[model]" in message and "\n" not in message
    return caught.value


@pytest.mark.parametrize("body, error, fragments", [
    ('name = "resnet18"\nwidth = "wide"\n', InvalidKnobValueError,
     ["knob width='wide' must be a number > 0, got str 'wide'"]),
    ('name = "resnet18"\nskip = 1\n', InvalidKnobValueError, ["knob skip=1 must be true or false"]),
    ('name = "vgg11"\ndropout = 1.5\n', InvalidKnobValueError, ["model 'vgg11'", "knob dropout=1.5 must be a number in [0, 1)"]),
    ('name = "resnet18"\nwidth = 0\n', InvalidKnobValueError, ["knob width=0 must be a number > 0"]),
    ('name = "resnet18"\nlayers = [2, 0, 2, 2]\n', InvalidKnobValueError, ["knob layers[1] must be an integer >= 1, got 0"]),
    ('name = "resnet18"\nlayers = [2, 2, 2]\n', InvalidKnobValueError, ["knob layers must be a list of 4 integers >= 1"]),
    ('name = "resnet18"\nnorm = "ln"\n', InvalidKnobValueError, ["must be one of 'bn', 'gn', 'none', got 'ln'"]),
    ('name = "vgg11"\nnorm = "gn"\n', InvalidKnobValueError, ["must be one of 'bn', 'none', got 'gn'"]),
    ('name = "resnet18"\ndrop_out = 0.1\n', UnknownKnobError,
     ["model 'resnet18' has no knob 'drop_out'; did you mean 'dropout'? its knobs are: dropout, "]),
    ('name = "resnet5O"\n', UnknownModelError, ["unknown model 'resnet5O'; registered models are: resnet50, "]),
])
def test_bad_model_table_names_file_section_knob_and_nearest_match(tmp_path, body, error, fragments):
    err = refusal(model_toml(tmp_path, body))
    assert isinstance(err, error)
    for fragment in fragments:
        assert fragment in str(err)


def test_a_knob_of_one_model_is_refused_for_another(tmp_path):
    cfg = load_config(model_toml(tmp_path, 'name = "resnext50_32x4d"\ncardinality = 8\nbase_width = 16\n'))
    assert cfg.model.knobs() == {"cardinality": 8, "base_width": 16}
    err = refusal(model_toml(tmp_path, 'name = "resnet50"\ncardinality = 8\n'))
    assert isinstance(err, UnknownKnobError) and "model 'resnet50' has no knob 'cardinality'" in str(err)
    # switching the model by override keeps the file's knobs: they must fit the new model too
    err = refusal(ROOT / "configs/quickstart.toml", ["model.name=vgg11"])
    assert "model 'vgg11' has no knob 'layers'" in str(err)  # quickstart's width is a VGG knob too


def test_set_overrides_are_checked_and_coerced_like_the_file():
    cfg = load_config(ROOT / "configs/resnet18.toml", ["model.dropout=0.1", "model.width=1", "model.norm=gn"])
    assert cfg.model.knobs() == {"dropout": 0.1, "width": 1.0, "norm": "gn"}
    assert isinstance(cfg.model.knobs()["width"], float)
    with pytest.raises(InvalidKnobValueError, match=r"resnet18.toml: \[model\] model 'resnet18': knob dropout=-0.1 must be"):
        load_config(ROOT / "configs/resnet18.toml", ["model.dropout=-0.1"])
    with pytest.raises(UnknownKnobError, match="did you mean 'dropout'"):
        load_config(ROOT / "configs/resnet18.toml", ["model.dropuot=0.1"])


def test_cli_set_model_knob_prints_and_refuses():
    ok = subprocess.run([sys.executable, "-m", "fasttrain", "--cfg", "configs/resnet18.toml", "--print-config",
                         "--set", "model.dropout=0.1"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0
    model_section = ok.stdout.split("[model]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert model_section == ['name = "resnet18"', "dropout = 0.1"]
    bad = subprocess.run([sys.executable, "-m", "fasttrain", "--cfg", "configs/resnet18.toml", "--model.dropout=2"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    assert "configs/resnet18.toml: [model] model 'resnet18': knob dropout=2 must be a number in [0, 1)" in bad.stderr


def test_config_loading_checks_knobs_without_importing_torch():
    code = ("import sys; from fasttrain.config import load_config; "
            "cfg = load_config('configs/resnext50.toml', ['model.cardinality=8']); "
            "assert cfg.model.knobs()['cardinality'] == 8; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_model_table_round_trips_through_dict_toml_and_old_checkpoints(tmp_path):
    cfg = load_config(ROOT / "configs/quickstart.toml", ["model.dropout=0.2", "model.norm=gn"])
    assert to_dict(cfg)["model"] == {"name": "resnet18", "dropout": 0.2, "layers": [1, 1, 1, 1], "norm": "gn", "width": 0.25}
    assert from_dict(to_dict(cfg), "ckpt") == cfg
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    # checkpoints written before the knob schema stored every family's knob, unset ones as None
    old = to_dict(cfg)
    old["model"].update(cardinality=None, embed_dim=None, head=None, skip=None)
    assert from_dict(old, "old.pt") == cfg


def test_every_default_fits_its_own_schema():
    for name in list_models():
        assert check_knobs(name, model_knobs(name)) == {
            k: tuple(v) if isinstance(v, list) else v for k, v in model_knobs(name).items()}, name


def test_a_new_knob_is_one_annotated_parameter(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model
    def tiny_mlp(num_classes: int = 200, *, hidden: Annotated[int, Range(1, 64)] = 8) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.Linear(hidden, num_classes))

    assert load_config(model_toml(tmp_path, 'name = "tiny_mlp"\nhidden = 16\n')).model.knobs() == {"hidden": 16}
    err = refusal(model_toml(tmp_path, 'name = "tiny_mlp"\nhidden = 65\n'))
    assert "knob hidden=65 must be an integer in [1, 64], got 65" in str(err)


def test_builders_need_annotated_knobs(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    def untyped(num_classes: int = 200, *, hidden=8):
        return nn.Identity()

    with pytest.raises(TypeError, match="type annotation"):
        register_model(untyped)
