"""Study suite files: parse a suite TOML into runs and comparisons, checking its shape and names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasttrain.config import ConfigError, read_toml
from fasttrain.errors import UserError, did_you_mean

SUITES_DIR = Path("configs") / "studies"
# Run and comparison names become directory and file names: keep them portable.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

_TOP_KEYS = ("suite", "quick", "run", "comparison")
_SUITE_KEYS = ("name", "title", "description", "overrides")
_QUICK_KEYS = ("overrides",)
_RUN_KEYS = ("name", "config", "overrides", "quick", "note")
_COMPARISON_KEYS = ("name", "title", "runs", "note")


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


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise SuiteError(f"{where}: unknown key '{key}'; {did_you_mean(key, list(allowed))}valid keys: {', '.join(allowed)}")


def _string(table: dict[str, Any], key: str, where: str, *, required: bool = False, default: str = "") -> str:
    if key not in table:
        if required:
            raise SuiteError(f"{where}: missing '{key}' (a string)")
        return default
    value = table[key]
    if not isinstance(value, str):
        raise SuiteError(f"{where}: '{key}' must be a string, got {type(value).__name__} {value!r}")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{where}: '{key}' must be a list of strings like \"train.epochs=3\", got {value!r}")
    return tuple(value)


def _name(table: dict[str, Any], where: str) -> str:
    name = _string(table, "name", where, required=True)
    if not NAME_PATTERN.match(name):
        raise SuiteError(f"{where}: name {name!r} must be letters, digits, '_', '-' or '.' (it names a directory)")
    return name


def _tables(raw: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SuiteError(f"{where}: '{key}' must be an array of tables ([[{key}]] entries)")
    return value


def _section(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: '{key}' must be a table ([{key}])")
    return value


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
    _check_keys(raw, _TOP_KEYS, where)
    head = _section(raw, "suite", where)
    _check_keys(head, _SUITE_KEYS, f"{where}: [suite]")
    quick = _section(raw, "quick", where)
    _check_keys(quick, _QUICK_KEYS, f"{where}: [quick]")

    runs: list[RunSpec] = []
    for index, table in enumerate(_tables(raw, "run", where)):
        at = f"{where}: [[run]] #{index + 1}"
        _check_keys(table, _RUN_KEYS, at)
        name = _name(table, at)
        at = f"{where}: run '{name}'"
        if any(r.name == name for r in runs):
            raise SuiteError(f"{at}: the name is used twice; run names must be unique")
        config = _string(table, "config", at, required=True)
        runs.append(RunSpec(name=name, config=(path.parent / config).resolve(),
                            overrides=_strings(table, "overrides", at), quick_overrides=_strings(table, "quick", at),
                            note=_string(table, "note", at)))
    if not runs:
        raise SuiteError(f"{where}: the suite names no runs; add [[run]] entries with name and config")

    comparisons: list[Comparison] = []
    run_names = [r.name for r in runs]
    for index, table in enumerate(_tables(raw, "comparison", where)):
        at = f"{where}: [[comparison]] #{index + 1}"
        _check_keys(table, _COMPARISON_KEYS, at)
        name = _name(table, at)
        at = f"{where}: comparison '{name}'"
        if any(c.name == name for c in comparisons):
            raise SuiteError(f"{at}: the name is used twice; comparison names must be unique")
        members = _strings(table, "runs", at)
        if not members:
            raise SuiteError(f"{at}: 'runs' is empty; list the run names it compares")
        for member in members:
            if member not in run_names:
                raise SuiteError(f"{at}: unknown run '{member}'; {did_you_mean(member, run_names)}runs: {', '.join(run_names)}")
        comparisons.append(Comparison(name=name, title=_string(table, "title", at, default=name),
                                      runs=members, note=_string(table, "note", at)))

    name = _string(head, "name", f"{where}: [suite]", default=path.stem)
    if not NAME_PATTERN.match(name):
        raise SuiteError(f"{where}: [suite] name {name!r} must be letters, digits, '_', '-' or '.'")
    return Suite(path=path, name=name, title=_string(head, "title", where, default=name),
                 description=_string(head, "description", where), overrides=_strings(head, "overrides", f"{where}: [suite]"),
                 quick_overrides=_strings(quick, "overrides", f"{where}: [quick]"),
                 runs=tuple(runs), comparisons=tuple(comparisons))
