"""Study suite files: parse a suite TOML (a dataclass schema, built like a config) into runs and comparisons."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fasttrain.config import ConfigError, read_toml
from fasttrain.schema import build_dataclass
from fasttrain.errors import UserError, did_you_mean

SUITES_DIR = Path("configs") / "studies"
# Run and comparison names become directory and file names: keep them portable.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

class SuiteError(UserError):
    """A suite file that cannot be used as written."""


@dataclass(frozen=True)
class RunSpec:
    name: str
    config: Path
    """The base experiment config, resolved against the suite file's directory."""
    overrides: tuple[str, ...] = ()
    quick_overrides: tuple[str, ...] = ()
    """Applied after the suite's [quick] overrides, in --quick mode only."""
    note: str = ""
    seeds: tuple[int, ...] = ()
    """train.seed of each repeat, each its own run directory; empty: one run with the config's seed."""


@dataclass(frozen=True)
class Comparison:
    name: str
    title: str
    runs: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    title: str
    description: str
    overrides: tuple[str, ...]
    """Applied to every run, after its config file and before its own overrides."""
    quick_overrides: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    comparisons: tuple[Comparison, ...]

    def run(self, name: str) -> RunSpec:
        for spec in self.runs:
            if spec.name == name:
                return spec
        raise KeyError(name)


# --- the file's schema: one dataclass per table, built by fasttrain.schema (unknown keys, types, nearest match) ---

@dataclass(frozen=True)
class _SuiteTable:
    name: str = ""
    """Default: the file's stem."""
    title: str = ""
    description: str = ""
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    """Every run is repeated once per seed (a run's own `seeds` replaces these)."""


@dataclass(frozen=True)
class _QuickTable:
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class _RunTable:
    name: str
    config: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    note: str = ""
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class _ComparisonTable:
    name: str
    runs: tuple[str, ...]
    title: str = ""
    note: str = ""


@dataclass(frozen=True)
class _SuiteFile:
    suite: _SuiteTable = _SuiteTable()
    quick: _QuickTable = _QuickTable()
    run: tuple[_RunTable, ...] = ()
    comparison: tuple[_ComparisonTable, ...] = ()


def _check_name(name: str, where: str) -> None:
    if not NAME_PATTERN.match(name):
        raise SuiteError(f"{where}: name {name!r} must be letters, digits, '_', '-' or '.' (it names a directory)")


def _unique(names: list[str], kind: str, where: str) -> None:
    for index, name in enumerate(names):
        if name in names[:index]:
            raise SuiteError(f"{where}: {kind} '{name}': the name is used twice; {kind} names must be unique")


def check_seeds(seeds: tuple[int, ...], where: str) -> tuple[int, ...]:
    """Seeds are distinct non-negative integers (each names a run directory, seedN)."""
    for seed in seeds:
        if seed < 0:
            raise SuiteError(f"{where}: seed {seed} must be >= 0")
    for index, seed in enumerate(seeds):
        if seed in seeds[:index]:
            raise SuiteError(f"{where}: seed {seed} is listed twice; seeds must be distinct")
    return tuple(seeds)


def _suite_dirs() -> list[Path]:
    """configs/studies/ here, then the one beside the fasttrain package (a checkout run from elsewhere)."""
    import fasttrain

    beside_package = Path(fasttrain.__file__).resolve().parent.parent / SUITES_DIR
    return [SUITES_DIR] + ([beside_package] if beside_package.resolve() != SUITES_DIR.resolve() else [])


def find_suite(name_or_path: str) -> Path:
    """A suite file path as given, or `configs/studies/NAME.toml` for a bare name like `seed`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix != ".toml" and len(path.parts) == 1:
        for directory in _suite_dirs():
            if (directory / f"{name_or_path}.toml").is_file():
                return directory / f"{name_or_path}.toml"
    known = sorted({p.stem for d in _suite_dirs() if d.is_dir() for p in d.glob("*.toml")})
    hint = f"; known suites: {', '.join(known)}" if known else ""
    raise SuiteError(f"suite file not found: {name_or_path}{hint}")


def load_suite(path: str | Path) -> Suite:
    """Parse and check a suite file; config paths are resolved against the file's directory."""
    path = Path(path)
    try:
        raw = read_toml(path)
    except ConfigError as err:
        raise SuiteError(str(err).replace("config file not found", "suite file not found")) from None
    where = str(path)
    try:
        parsed = build_dataclass(_SuiteFile, raw, where)
    except ConfigError as err:
        raise SuiteError(str(err)) from None
    if not parsed.run:
        raise SuiteError(f"{where}: the suite names no runs; add [[run]] entries with name and config")
    for kind, tables in (("run", parsed.run), ("comparison", parsed.comparison)):
        for index, table in enumerate(tables):
            _check_name(table.name, f"{where}: [[{kind}]] #{index + 1}")
        _unique([table.name for table in tables], kind, where)
    run_names = [table.name for table in parsed.run]
    for table in parsed.comparison:
        at = f"{where}: comparison '{table.name}'"
        if not table.runs:
            raise SuiteError(f"{at}: 'runs' is empty; list the run names it compares")
        for member in table.runs:
            if member not in run_names:
                raise SuiteError(f"{at}: unknown run '{member}'; {did_you_mean(member, run_names)}runs: {', '.join(run_names)}")
    head = parsed.suite
    name = head.name or path.stem
    _check_name(name, f"{where}: [suite]")
    suite_seeds = check_seeds(head.seeds, f"{where}: [suite] seeds")
    return Suite(
        path=path, name=name, title=head.title or name, description=head.description, overrides=head.overrides,
        quick_overrides=parsed.quick.overrides,
        runs=tuple(RunSpec(name=r.name, config=(path.parent / r.config).resolve(), overrides=r.overrides,
                           quick_overrides=r.quick, note=r.note,
                           seeds=check_seeds(r.seeds, f"{where}: run '{r.name}' seeds") or suite_seeds)
                    for r in parsed.run),
        comparisons=tuple(Comparison(name=c.name, title=c.title or c.name, runs=c.runs, note=c.note)
                          for c in parsed.comparison),
    )
