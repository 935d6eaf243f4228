"""Study suites: the shipped suites plan cleanly, bad suites fail before any run starts, dry-run commands are exact."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from fasttrain.__main__ import _dotted_overrides, train_parser
from fasttrain.config import load_config, to_toml
from fasttrain.rundir import RunDir
from fasttrain.errors import run_cli
from fasttrain.study.__main__ import main as study_main
from fasttrain.study.plan import plan_suite
from fasttrain.study.runner import last_error_line
from fasttrain.study.suite import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "configs" / "studies"


@pytest.fixture(scope="module")
def planned():
    """Each shipped suite planned in both modes (configs loaded, models built on the meta device)."""
    out = {}
    for name in ("seed", "axes", "recipes"):
        suite = load_suite(SUITES / f"{name}.toml")
        for quick in (False, True):
            out[name, quick] = (suite, {r.name: r for r in plan_suite(suite, out_dir=Path("/nonexistent"), quick=quick)})
    return out


@pytest.mark.parametrize("name", ["seed", "axes", "recipes"])
def test_quick_mode_is_synthetic_tiny_and_short(planned, name):
    suite, runs = planned[name, True]
    data_sets: dict[str, set] = {}
    for run in runs.values():
        d = run.cfg.data
        data_sets.setdefault(d.root, set()).add((d.image_size, d.synth_classes, d.synth_per_class,
                                                 d.synth_val_per_class, d.split_seed, d.val_ratio))
    # runs sharing a root must ask for the same synthetic set, or each would rewrite it for the next
    assert all(len(params) == 1 for params in data_sets.values()), data_sets
    assert len(data_sets) <= 2
    for run in runs.values():
        cfg = run.cfg
        assert cfg.data.source == "synthetic" and cfg.train.epochs <= 3 and cfg.train.amp == "off"
        assert cfg.data.synth_classes * cfg.data.synth_per_class <= 1000
        knobs = cfg.model.knobs()
        assert knobs.get("width", 1.0) <= 0.25 or knobs.get("embed_dim", 384) <= 64, run.name


def test_seed_suite_holds_the_studys_comparisons_on_its_recipes(planned):
    suite, runs = planned["seed", False]
    members = {c.name: list(c.runs) for c in suite.comparisons}
    models = {name: [(runs[r].cfg.model.name, runs[r].cfg.model.knobs()) for r in group] for name, group in members.items()}
    assert models["normalization"] == [("vgg19", {"norm": "bn"}), ("vgg19", {"norm": "none"})]
    assert [m for m, _ in models["depth"]] == ["resnet18", "resnet34", "resnet50"]
    assert models["skip_connections"] == [("resnet50", {}), ("resnet50", {"skip": False}), ("resnet34", {})]
    assert [m for m, _ in models["cardinality"]] == ["resnet50", "resnext50_32x4d"]
    assert [m for m, _ in models["transformer"]] == ["resnext50_32x4d", "t2t_vit_t_14"]
    for run in runs.values():
        assert run.cfg.data.source == "tiny-imagenet" and run.overrides == ()
    assert runs["vgg19"].cfg.train.epochs == 200 and runs["vgg19"].cfg.optim.name == "adam"
    assert runs["resnet50"].cfg.train.epochs == 100 and runs["resnet50"].cfg.optim.lr == 0.2
    assert runs["resnext50"].cfg.optim.lr == 0.1 and runs["resnext50"].cfg.train.batch_size == 128


def test_axes_suite_varies_one_thing_per_comparison(planned):
    suite, runs = planned["axes", False]
    groups = {c.name: [runs[r].cfg for r in c.runs] for c in suite.comparisons}
    assert [c.model.knobs().get("dropout", 0.0) for c in groups["dropout"]] == [0.0, 0.2, 0.5]
    assert [c.model.knobs().get("norm", "bn") for c in groups["normalization"]] == ["bn", "gn", "none"]
    assert [c.sched.name for c in groups["lr_decay"]] == ["cosine", "step", "constant"]
    assert [c.model.knobs().get("skip", True) for c in groups["residual"]] == [True, False]
    assert [c.model.name for c in groups["depth"]] == ["resnet18", "resnet34", "resnet50"]
    for name, cfgs in groups.items():
        if name != "depth":  # apart from the varied knob, the same run
            assert len({c.model.name for c in cfgs}) == 1 and len({c.optim for c in cfgs}) == 1


def test_recipes_suite_uses_regularisation_the_study_did_not(planned):
    _, runs = planned["recipes", False]
    for run in runs.values():
        t = run.cfg.train
        assert t.label_smoothing > 0 and t.ema and run.cfg.sched.warmup_epochs > 0
        assert run.cfg.data.crop_scale[0] > 0.08
    assert runs["resnext50_recipe"].cfg.train.cutmix > 0


def write_suite(path: Path, runs: list[tuple[str, str, list[str]]]) -> Path:
    (path.parent / "base.toml").write_text('[model]\nname = "resnet18"\n\n[train]\nepochs = 2\n')
    text = ""
    for name, config, overrides in runs:
        text += f'[[run]]\nname = "{name}"\nconfig = "{config}"\noverrides = {json.dumps(overrides)}\n\n'
    path.write_text(text)
    return path


def study(argv: list[str]) -> int:
    return run_cli(lambda: study_main(argv))


@pytest.mark.parametrize("overrides, expected", [
    (["train.epoch=3"], "unknown key 'epoch' in [train]; did you mean 'epochs'?"),
    (["train.epochs=0"], "[train] epochs must be an integer >= 1, got 0"),
    (["trian.epochs=3"], "unknown section [trian]"),
    (["model.cardinality=4"], "has no knob 'cardinality'"),  # resnet18 has no groups
    (["model.name=t2t_vit_t_14", "model.width=0.5"], "has no knob 'width'"),
    (["model.name=t2t_vit_t_14", "model.img_size=64", "data.image_size=32"], "T2T-ViT built for 64×64 images got 32×32"),
    (["model.name=resnext50_32x4d", "model.width=0.125"], "no channels per group"),  # 1/8 width of 32×4d
])
def test_bad_override_fails_before_any_run_starts(tmp_path, capsys, overrides, expected):
    suite = write_suite(tmp_path / "s.toml", [("fine", "base.toml", []), ("bad_one", "base.toml", overrides)])
    out = tmp_path / "out"
    assert study([str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "run 'bad_one'" in err and expected in err
    assert not out.exists(), "nothing may start or be written when a run is invalid"


def test_unknown_config_fails_before_any_run_starts(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.toml", [("fine", "base.toml", []), ("lost", "configs/nope.toml", [])])
    assert study([str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run 'lost'" in err and "nope.toml" in err and "not found" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, expected", [
    ('[[run]]\nname = "a"\nconfig = "base.toml"\n[[run]]\nname = "a"\nconfig = "base.toml"\n', "used twice"),
    ('[[run]]\nname = "a"\nconfig = "base.toml"\n[[comparison]]\nname = "c"\nruns = ["a", "b"]\n', "unknown run 'b'"),
    ('[[run]]\nname = "a"\nconfig = "base.toml"\noverides = []\n', "did you mean 'overrides'?"),
    ('[[run]]\nname = "a/b"\nconfig = "base.toml"\n', "names a directory"),
    ('[[run]]\nname = "a"\nconfig = "base.toml"\noverrides = "train.epochs=1"\n', "must be a list of strings"),
    ('[suite]\nname = "x"\n', "names no runs"),
    ('[[runs]]\nname = "a"\n', "unknown key 'runs'; did you mean 'run'?"),
])
def test_malformed_suite_is_one_clear_error(tmp_path, text, expected):
    (tmp_path / "base.toml").write_text("")
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(SuiteError, match="s.toml") as err:
        load_suite(tmp_path / "s.toml")
    assert expected in str(err.value)


def test_only_names_must_exist(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.toml", [("alpha", "base.toml", [])])
    assert study([str(suite), "--only", "alpah", "--dry-run", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'alpha'?" in capsys.readouterr().err


@pytest.mark.parametrize("nproc", [1, 8])
def test_dry_run_prints_exact_trainer_commands(tmp_path, monkeypatch, capsys, nproc):
    monkeypatch.chdir(tmp_path)
    assert study([str(SUITES / "seed.toml"), "--quick", "--dry-run", "--nproc", str(nproc),
                  "--set", "train.seed=7", "--only", "resnet18", "t2t_vit_t_14"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert len(commands) == 2
    suite = load_suite(SUITES / "seed.toml")
    for command, name in zip(commands, ["resnet18", "t2t_vit_t_14"]):
        launcher = ["python", "-m", "fasttrain"] if nproc == 1 else \
            ["torchrun", "--standalone", "--nproc_per_node=8", "-m", "fasttrain"]
        assert command[:len(launcher)] == launcher
        args, extra = train_parser().parse_known_args(command[len(launcher):])
        assert extra == [] and args.resume == "auto" and args.out == f"runs/seed-quick/{name}"
        spec = suite.run(name)
        assert args.set == list(suite.quick_overrides + spec.quick_overrides) + ["train.seed=7"]
        cfg = load_config(REPO / args.cfg if not Path(args.cfg).is_absolute() else args.cfg, args.set + _dotted_overrides(extra))
        assert cfg.data.source == "synthetic" and cfg.train.seed == 7
    assert not (tmp_path / "runs" / "seed-quick" / "resnet18").exists(), "a dry run starts nothing"
    manifest = json.loads((tmp_path / "runs" / "seed-quick" / "suite.json").read_text())
    assert [r["name"] for r in manifest["runs"]][:2] == ["vgg19_bn", "vgg19"] and manifest["quick"] is True


def test_run_dir_of_another_config_is_refused(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.toml", [("r", "base.toml", [])])
    stale = tmp_path / "out" / "r"
    stale.mkdir(parents=True)
    other = load_config(tmp_path / "base.toml", ["train.epochs=9"])
    RunDir(stale).config.write_text("# resolved config of base\n" + to_toml(other))
    assert study([str(suite), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds a run of another config" in err and "train.epochs 9 → 2" in err
    # the same config (a resumable or finished run of this suite) is fine
    RunDir(stale).config.write_text(to_toml(load_config(tmp_path / "base.toml")))
    assert study([str(suite), "--dry-run", "--out", str(tmp_path / "out")]) == 0


def test_last_error_line_prefers_the_trainers_error():
    log = "epoch 1/2: ok\r\nprogress 50%\rprogress 100%\nerror: data root x does not exist; fix it\n"
    assert last_error_line(log) == "data root x does not exist; fix it"
    assert last_error_line("Traceback (most recent call last):\n  ...\nValueError: boom\n") == "ValueError: boom"
    assert last_error_line("") == ""


def test_batch_that_does_not_split_over_nproc_is_refused(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.toml", [("r", "base.toml", ["train.batch_size=96"])])
    assert study([str(suite), "--dry-run", "--nproc", "5", "--out", str(tmp_path / "o")]) == 2
    assert "batch_size 96" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert study([str(suite), "--dry-run", "--nproc", "4", "--out", str(tmp_path / "o")]) == 0
