"""The report on hand-made run directories: table rows, the study's numbers, statuses, valid PNG plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fasttrain.config import load_config, to_toml
from fasttrain.errors import run_cli
from fasttrain.report.__main__ import main as report_main
from fasttrain.report.render import render_runs, render_suite
from fasttrain.report.study_reference import differences_from_study, study_result
from fasttrain.study.__main__ import main as study_main
from fasttrain.rundir import RunDir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(run_dir: Path, overrides: list[str], *, epochs: int, done: int, finished: bool,
             seconds_per_epoch: float = 10.0, params: int = 1_000_000, checkpoints: bool = True) -> Path:
    """A run directory as the trainer leaves it: config.toml, metrics.jsonl, checkpoints/, results.json if finished."""
    cfg = load_config(None, overrides + [f"train.epochs={epochs}"])
    run_dir.mkdir(parents=True)
    RunDir(run_dir).config.write_text(f"# resolved config of {run_dir.name}\n" + to_toml(cfg))
    lines, best = [], (-1.0, -1)
    for epoch in range(1, done + 1):
        val = 0.1 + 0.8 * epoch / epochs
        best = max(best, (val, epoch))
        lines.append({"kind": "step", "step": epoch * 10 - 5, "epoch": epoch - 1, "loss": 2.0 / epoch, "top1": 0.1,
                      "lr": 0.1, "images_per_s": 100.0, "data_wait_pct": 1.0, "peak_mem_mb": 10.0})
        lines.append({"kind": "epoch", "step": epoch * 10, "epoch": epoch, "train_loss": 2.3 / epoch,
                      "train_top1": val - 0.05, "lr": 0.1, "wall_time_s": seconds_per_epoch * epoch,
                      "val_loss": 1.0 / epoch, "val_top1": val, "val_top5": min(1.0, val + 0.1)})
    RunDir(run_dir).metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    if checkpoints:
        RunDir(run_dir).checkpoints.mkdir()
        (RunDir(run_dir).checkpoints / f"ckpt_e{done:04d}_s{done * 10:08d}.pt").write_bytes(b"stand-in")
    if finished:
        results = {"status": "finished", "config_name": run_dir.name, "model": cfg.model.name, "params": params,
                   "num_classes": 200, "epochs": epochs, "epochs_done": done, "steps": done * 10, "world_size": 1,
                   "device": "cpu", "backend": "torch", "best_val_top1": best[0], "best_val_epoch": best[1],
                   "wall_time_s": seconds_per_epoch * done, "images_per_s": 1234.0, "val_top1": best[0],
                   "val_top5": 0.95, "test_top1": 0.6123, "test_top5": 0.8456, "best_test_top1": 0.6, "best_test_top5": 0.84}
        RunDir(run_dir).results.write_text(json.dumps(results))
    return run_dir


def table_rows(report: str) -> dict[str, list[str]]:
    """The first table's rows (after '## Runs'), by run name."""
    section = report.split("## Runs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| run |"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0]] = cells
    return rows


def assert_valid_png(path: Path, min_bytes: int = 10_000) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400
    assert pixels[..., :3].std() > 0.05, f"{path} is nearly blank"


TINY = ["data.source=tiny-imagenet", "data.root=data/tiny-imagenet-200"]


def test_run_dirs_report_table_study_numbers_and_plots(tmp_path):
    runs = tmp_path / "runs"
    noskip = make_run(runs / "resnet50_noskip", TINY + ["model.name=resnet50", "model.skip=false"],
                      epochs=4, done=4, finished=True, params=21_133_000)
    vgg = make_run(runs / "vgg19", TINY + ["model.name=vgg19", "model.norm=none"], epochs=4, done=4, finished=True,
                   seconds_per_epoch=30.0)
    small = make_run(runs / "resnet18_small", ["model.name=resnet18", "model.width=0.125"], epochs=4, done=4,
                     finished=True)
    half = make_run(runs / "resnet34_half", TINY + ["model.name=resnet34"], epochs=6, done=2, finished=False)
    never = runs / "gn"
    never.mkdir()

    report = render_runs([noskip, vgg, small, half, never], tmp_path / "out")
    text = report.read_text()
    rows = table_rows(text)
    assert list(rows) == ["resnet50_noskip", "vgg19", "resnet18_small", "resnet34_half", "gn"]
    header = [c.strip() for c in text.split("## Runs", 1)[1].split("| run |", 1)[1].split("\n")[0].split("|")[:-1]]
    col = {name: i + 1 for i, name in enumerate(header)}
    assert rows["resnet50_noskip"][col["study top-1"]] == "0.5403"
    assert rows["resnet50_noskip"][col["model"]] == "resnet50 skip=false"
    assert rows["resnet50_noskip"][col["params"]] == "21.13 M"
    assert rows["resnet50_noskip"][col["test top-1"]] == "0.6123"
    assert rows["resnet50_noskip"][col["test top-5"]] == "0.8456"
    assert rows["resnet50_noskip"][col["best val top-1"]] == "0.9000 (ep 4)"
    assert rows["resnet50_noskip"][col["images/s"]] == "1,234"
    assert rows["resnet50_noskip"][col["wall time"]] == "40 s"
    assert rows["vgg19"][col["study top-1"]] == "0.0050"
    assert rows["vgg19"][col["wall time"]] == "2.0 min"
    # synthetic data and 1/8 width: not the study's setup, so no study number beside it
    assert rows["resnet18_small"][col["study top-1"]] == "–"
    assert rows["resnet34_half"][col["status"]] == "**incomplete**: epoch 2/6"
    assert rows["resnet34_half"][col["epochs"]] == "2/6"
    assert rows["resnet34_half"][col["best val top-1"]] == "0.3667 (ep 2)"
    assert rows["gn"][col["status"]] == "**not run**"
    assert rows["resnet50_noskip"][col["status"]] == "finished"

    curves = tmp_path / "out" / "runs_curves.png"
    wall = tmp_path / "out" / "runs_wall_time.png"
    assert f"]({curves.name})" in text and f"]({wall.name})" in text
    assert_valid_png(curves)
    assert_valid_png(wall)
    assert "No curves yet for: gn (not run)" in text


def test_run_dirs_report_has_one_runs_table_and_no_study_column_off_the_studys_setup(tmp_path):
    """Issue 20 item 14: the runs table was printed twice ("Runs" and "All runs"), and runs on other data got a
    "study top-1" column."""
    a = make_run(tmp_path / "a", ["model.name=resnet18"], epochs=2, done=2, finished=True)
    b = make_run(tmp_path / "b", ["model.name=resnet34"], epochs=2, done=2, finished=True, seconds_per_epoch=12.0)
    text = render_runs([a, b], tmp_path / "out").read_text()
    assert text.count("| run |") == 1
    assert "study top-1" not in text
    assert (tmp_path / "out" / "runs_curves.png").is_file()
    assert "](runs_wall_time.png)" in text  # val top-1 against training time, for every comparison


def test_long_comparison_titles_fit_inside_their_plots(tmp_path, monkeypatch):
    """Issue 20 item 14: the seed suite's skip-connections title ran off `skip_connections_wall_time.png`."""
    import fasttrain.report.plots as plots

    outside = []
    real_save = plots._save

    def checking_save(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        texts = list(fig.texts) + [ax.title for ax in fig.axes]
        for text in texts:
            extent = text.get_window_extent(renderer)
            if text.get_text() and (extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y1 > box.y1 + 1):
                outside.append((Path(path).name, text.get_text()))
        real_save(fig, path)

    monkeypatch.setattr(plots, "_save", checking_save)
    title = "Skip connections: ResNet50 with and without, and ResNet34 at a similar size"
    suite = tmp_path / "s.toml"
    write_suite(suite, {"resnet50": [], "resnet50_noskip": ["model.name=resnet34"]},
                {"skip_connections": ["resnet50", "resnet50_noskip"]})
    suite.write_text(suite.read_text().replace('title = "Comparison skip_connections"', f'title = "{title}"'))
    out = tmp_path / "suite"
    assert run_cli(lambda: study_main([str(suite), "--dry-run", "--out", str(out)])) == 0
    make_run(out / "resnet50", [], epochs=3, done=3, finished=True)
    make_run(out / "resnet50_noskip", ["model.name=resnet34"], epochs=3, done=3, finished=True, seconds_per_epoch=30.0)
    render_suite(out, out / "report")
    assert (out / "report" / "skip_connections_wall_time.png").is_file()
    assert not outside, f"titles outside their figure: {outside}"


def write_suite(path: Path, runs: dict[str, list[str]], comparisons: dict[str, list[str]]) -> Path:
    (path.parent / "base.toml").write_text('[model]\nname = "resnet18"\n\n[train]\nepochs = 6\n')
    text = ""
    for name, overrides in runs.items():
        text += f'[[run]]\nname = "{name}"\nconfig = "base.toml"\n'
        text += "overrides = [" + ", ".join(json.dumps(o) for o in overrides) + "]\n\n"
    for name, members in comparisons.items():
        text += f'[[comparison]]\nname = "{name}"\ntitle = "Comparison {name}"\nruns = {json.dumps(members)}\n\n'
    path.write_text(text)
    return path


def test_suite_report_marks_failed_incomplete_and_unstarted_runs(tmp_path):
    suite = write_suite(tmp_path / "mini.toml",
                        {"done": [], "broken": ["model.name=resnet34"], "halfway": ["model.name=resnet50"],
                         "waiting": ["model.name=vgg19"]},
                        {"pair": ["done", "broken"], "rest": ["halfway", "waiting"]})
    out = tmp_path / "suite"
    assert run_cli(lambda: study_main([str(suite), "--dry-run", "--out", str(out)])) == 0
    manifest = json.loads((out / "suite.json").read_text())
    resolved = {run["name"]: run["resolved"] for run in manifest["runs"]}
    assert resolved["broken"]["model"]["name"] == "resnet34"

    make_run(out / "done", [], epochs=6, done=6, finished=True)
    make_run(out / "halfway", ["model.name=resnet50"], epochs=6, done=3, finished=False)
    manifest["attempts"]["broken"] = {"status": "failed", "exit_code": 2, "error": "data root data/x does not exist"}
    (out / "suite.json").write_text(json.dumps(manifest))

    report = render_suite(out, out / "report")
    text = report.read_text()
    rows = table_rows(text)
    assert list(rows) == ["done", "broken", "halfway", "waiting"]
    assert rows["broken"][-1] == "**failed**: exit 2: data root data/x does not exist"
    assert rows["broken"][1] == "resnet34"  # the planned config still names the model of a run that wrote nothing
    assert rows["halfway"][-1] == "**incomplete**: epoch 3/6"
    assert rows["waiting"][-1] == "**not run**"
    assert "## Failed runs" in text and "**broken**: exit 2" in text
    assert "## Comparison pair" in text and "## Comparison rest" in text
    for png in ("pair_curves.png", "rest_curves.png"):
        assert f"]({png})" in text
        assert_valid_png(out / "report" / png)
    assert "No curves yet for: broken (failed)" in text
    assert "No curves yet for: waiting (not run)" in text
    assert "python -m fasttrain --cfg" in text  # the commands section


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert run_cli(lambda: report_main([])) == 2
    assert run_cli(lambda: report_main(["--suite", str(tmp_path)])) == 2
    assert run_cli(lambda: report_main([str(tmp_path / "missing")])) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "suite.json" in errors[1] and "missing" in errors[2]


def test_report_cli_writes_to_out(tmp_path, capsys):
    run = make_run(tmp_path / "r", ["model.name=resnet18"], epochs=2, done=2, finished=True)
    assert run_cli(lambda: report_main([str(run), "--out", str(tmp_path / "rep")])) == 0
    assert (tmp_path / "rep" / "REPORT.md").is_file()
    assert "REPORT.md" in capsys.readouterr().out


@pytest.mark.parametrize("model, knobs, top1", [
    ("resnet50", {"skip": False}, 0.5403),
    ("resnet50", {}, 0.5897),
    ("vgg19", {"norm": "none"}, 0.0050),
    ("vgg19", {}, 0.5279),
    ("resnext50_32x4d", {}, 0.5929),
    ("t2t_vit_t_14", {"drop_path": 0.1}, 0.4163),
    ("resnet18", {"norm": "gn"}, None),
    ("resnet101", {}, None),
])
def test_study_numbers_keyed_by_model_and_knobs(model, knobs, top1):
    entry = study_result(model, knobs)
    assert (entry.top1 if entry else None) == top1


def test_differences_from_study_ignore_recipe_knobs():
    tin = {"source": "tiny-imagenet", "image_size": 64}
    assert differences_from_study("resnet18", {"dropout": 0.5}, tin) == []
    assert differences_from_study("resnet50", {"skip": False}, tin) == []
    assert differences_from_study("resnet18", {"width": 0.5}, tin) == ["width=0.5"]
    assert differences_from_study("resnet18", {}, {"source": "synthetic", "image_size": 32}) == [
        "synthetic data", "32px images"]


def test_the_report_never_imports_the_study():
    """study → report → suite_manifest: one direction, so neither package needs the other to load."""
    import ast

    package = Path(__file__).resolve().parents[1] / "fasttrain"
    imported = set()
    for path in list((package / "report").rglob("*.py")) + [package / "suite_manifest.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((path.name, alias.name) for alias in node.names)
    assert ("render.py", "fasttrain.suite_manifest") in imported  # the scan sees the report's imports
    assert not [pair for pair in imported if pair[1].startswith("fasttrain.study")], imported
