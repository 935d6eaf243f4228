"""Seeds in suites: one resumable run directory per (run, seed), listed by --dry-run, finished ones skipped; the
report's mean ± 95 % interval per configuration and the difference between arms with its verdict."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from fasttrain.errors import run_cli
from fasttrain.report.render import render_suite
from fasttrain.report.stats import difference, summarize, verdict
from fasttrain.study.__main__ import main as study_main
from fasttrain.study.plan import plan_suite
from fasttrain.study.runner import SKIPPED, run_all
from fasttrain.study.suite import load_suite
from test_report import make_run


def write_seeded_suite(path: Path, *, suite_seeds: str = "[0, 1, 2]", run_b_seeds: str = "") -> Path:
    (path.parent / "base.toml").write_text('[model]\nname = "resnet18"\n\n[train]\nepochs = 3\n')
    path.write_text(
        f'[suite]\nname = "pair"\nseeds = {suite_seeds}\n\n'
        '[[run]]\nname = "plain"\nconfig = "base.toml"\n\n'
        '[[run]]\nname = "better"\nconfig = "base.toml"\noverrides = ["train.label_smoothing=0.1"]\n'
        + (f"seeds = {run_b_seeds}\n" if run_b_seeds else "")
        + '\n[[comparison]]\nname = "recipe"\ntitle = "Plain against better"\nruns = ["plain", "better"]\n')
    return path


def dry_run_commands(capsys, argv: list[str]) -> dict[str, list[str]]:
    assert run_cli(lambda: study_main(argv + ["--dry-run"])) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = {}
    for head, command in zip(lines, lines[1:]):
        match = re.match(r"# (\S+): ", head)
        if match and command.startswith("python"):
            commands[match.group(1)] = shlex.split(command)
    return commands


def test_every_run_and_seed_is_its_own_run_directory_and_dry_run_lists_each(tmp_path, capsys):
    suite = write_seeded_suite(tmp_path / "pair.toml", run_b_seeds="[5, 6]")
    out = tmp_path / "out"
    commands = dry_run_commands(capsys, [str(suite), "--out", str(out)])
    assert list(commands) == ["plain/seed0", "plain/seed1", "plain/seed2", "better/seed5", "better/seed6"]
    for key, command in commands.items():
        name, seed = key.split("/seed")
        assert command[command.index("--out") + 1].endswith(f"out/{name}/seed{seed}")
        assert command[-4:-2] == ["--set", f"train.seed={seed}"] or f"train.seed={seed}" in command
        assert command[-2:] == ["--resume", "auto"]
    manifest = json.loads((out / "suite.json").read_text())
    assert [(r["name"], r["seed"], r["dir"]) for r in manifest["runs"]][:2] == [
        ("plain", 0, "plain/seed0"), ("plain", 1, "plain/seed1")]
    assert manifest["runs"][3]["resolved"]["train"]["seed"] == 5

    # the command line's seeds replace the suite's; --only picks a run with all its seeds
    commands = dry_run_commands(capsys, [str(suite), "--out", str(tmp_path / "o2"), "--only", "better", "--seeds", "3", "4"])
    assert list(commands) == ["better/seed3", "better/seed4"]


def test_a_suite_without_seeds_keeps_one_directory_per_run(tmp_path, capsys):
    suite = write_seeded_suite(tmp_path / "pair.toml", suite_seeds="[]")
    commands = dry_run_commands(capsys, [str(suite), "--out", str(tmp_path / "out")])
    assert list(commands) == ["plain", "better"]
    assert commands["plain"][commands["plain"].index("--out") + 1].endswith("out/plain")


@pytest.mark.parametrize("seeds, message", [("[1, 1]", "seed 1 is listed twice"), ("[-1]", "seed -1 must be >= 0")])
def test_bad_seeds_are_one_line_errors(tmp_path, capsys, seeds, message):
    suite = write_seeded_suite(tmp_path / "pair.toml", suite_seeds=seeds)
    assert run_cli(lambda: study_main([str(suite), "--dry-run", "--out", str(tmp_path / "out")])) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and message in err[0] and "seeds" in err[0]


def test_finished_seeds_are_skipped(tmp_path, capsys):
    suite = load_suite(write_seeded_suite(tmp_path / "pair.toml"))
    out = tmp_path / "out"
    planned = plan_suite(suite, out_dir=out, quick=False)
    for run in planned:
        make_run(run.run_dir, [f"train.seed={run.seed}", "train.label_smoothing=0.1" if run.name == "better" else
                               "train.label_smoothing=0.0"], epochs=3, done=3, finished=True)
    outcomes = run_all(planned, selected=["plain", "better"], out_dir=out, nproc=1,
                       manifest={"attempts": {}}, say=lambda line: None)
    assert [(o.name, o.status) for o in outcomes] == [(r.key, SKIPPED) for r in planned]
    assert len(outcomes) == 6


def seeded_report(tmp_path: Path, tops: dict[str, list[float]]) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    suite = write_seeded_suite(tmp_path / "pair.toml", suite_seeds=json.dumps(list(range(len(tops["plain"])))))
    out = tmp_path / "out"
    assert run_cli(lambda: study_main([str(suite), "--dry-run", "--out", str(out)])) == 0
    for name, values in tops.items():
        for seed, top1 in enumerate(values):
            run = make_run(out / name / f"seed{seed}", [], epochs=3, done=3, finished=True)
            results = json.loads((run / "results.json").read_text())
            (run / "results.json").write_text(json.dumps({**results, "test_top1": top1}))
    return render_suite(out, out / "report").read_text()


def test_report_gives_mean_interval_and_the_difference_with_its_verdict(tmp_path):
    plain, better = [0.90, 0.91, 0.905], [0.93, 0.935, 0.925]
    text = seeded_report(tmp_path, {"plain": plain, "better": better})
    s = summarize(better)
    row = next(line for line in text.splitlines() if line.startswith("| better | 3/3 |"))
    assert f"{s.mean:.4f} ± {s.half_width:.4f} (sd {s.sd:.4f})" in row
    d = difference(plain, better)
    assert d.excludes_zero and d.df is not None
    assert f"better better by {100 * d.diff:.1f} ± {100 * (d.high - d.low) / 2:.1f} points" in text
    assert "Welch" in text and "Student-t" in text
    assert "](recipe_curves.png)" in text and "](recipe_wall_time.png)" in text
    assert "| plain/seed0 |" in text  # every seed still has its row in the runs table


def test_overlapping_seeds_give_no_verdict_and_one_seed_renders_without_interval(tmp_path):
    text = seeded_report(tmp_path / "a", {"plain": [0.90, 0.93, 0.91], "better": [0.92, 0.90, 0.915]})
    assert "no difference detectable with 3 seeds" in text
    one = seeded_report(tmp_path / "b", {"plain": [0.90], "better": [0.95]})
    assert "One seed: the value alone, no interval" in one
    assert "from one seed per arm: no interval, so no verdict" in one
    assert "| better | 1/1 | 0.9500 |" in one


def test_verdict_words():
    d = difference([0.90, 0.91, 0.905], [0.93, 0.935, 0.925])
    assert verdict("A", "B", d).startswith("B better by 2.5 ± ")
    assert verdict("A", "B", difference([50.0, 51.0, 52.0], [40.0, 41.0, 40.5]), scale=1.0, unit="s",
                   higher_is_better=False).startswith("B faster by 10.5 ± ")
    assert verdict("A", "B", difference([0.9, 0.9], [0.95, 0.95])) == "B better by 5.0 ± 0.0 points"


def test_seed_directories_given_one_by_one_are_grouped_by_their_run(tmp_path):
    from fasttrain.report.render import render_runs

    dirs = [make_run(tmp_path / name / f"seed{seed}", [f"train.seed={seed}"], epochs=2, done=2, finished=True)
            for name in ("a", "b") for seed in (0, 1)]
    text = render_runs(dirs, tmp_path / "out").read_text()
    assert "| a/seed0 |" in text and "| b/seed1 |" in text
    assert "| a | 2/2 |" in text and "| b | 2/2 |" in text
    assert text.count("| run |") == 1
