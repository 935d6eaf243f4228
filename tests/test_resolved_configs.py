"""Every shipped config and every run of every suite keeps its resolved values: a changed default never changes a reproduction.

tests/data/resolved_configs.json was recorded from these files before the defaults changed (issue 19):
`python tests/test_resolved_configs.py --write` rewrites it, which is only right when a config file itself
was edited on purpose. Files listed in FOLLOWS_DEFAULTS are meant to follow the defaults and are not pinned.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

if __name__ == "__main__":  # run as a script: this checkout's fasttrain, not an installed one
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fasttrain.config import load_config, to_dict
from fasttrain.study.plan import run_overrides
from fasttrain.study.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "tests" / "data" / "resolved_configs.json"
# A new user's first real-data run (configs/digits.toml) and the digits comparison's "default" arm take the defaults
# on purpose: they are what is under test. Everything else, configs/quickstart.toml included, is pinned.
FOLLOWS_DEFAULTS = {"configs/digits.toml", "configs/studies/recipe_digits.toml#default",
                    "configs/studies/recipe_digits.toml#default --quick"}


def config_files() -> list[Path]:
    return sorted(p for p in (REPO / "configs").rglob("*.toml") if "studies" not in p.relative_to(REPO / "configs").parts)


def suite_files() -> list[Path]:
    return sorted((REPO / "configs" / "studies").glob("*.toml"))


def resolved_now() -> dict[str, dict]:
    """Key → resolved config: `configs/X.toml`, and `configs/studies/S.toml#RUN` (with ` --quick` in quick mode)."""
    out = {}
    for path in config_files():
        out[str(path.relative_to(REPO))] = to_dict(load_config(path))
    for path in suite_files():
        suite = load_suite(path)
        for spec in suite.runs:
            for quick in (False, True):
                key = f"{path.relative_to(REPO)}#{spec.name}" + (" --quick" if quick else "")
                out[key] = to_dict(load_config(spec.config, run_overrides(suite, spec, quick=quick)))
    return out


def pinned(key: str) -> bool:
    return key not in FOLLOWS_DEFAULTS


def recorded_values() -> dict[str, dict]:
    return json.loads(RECORD.read_text(encoding="utf-8")) if RECORD.is_file() else {}


def test_every_config_and_suite_run_is_recorded():
    recorded = recorded_values()
    missing = sorted(k for k in resolved_now_cached() if pinned(k) and k not in recorded)
    assert not missing, f"not recorded (new config? run `python {Path(__file__).name} --write` once): {missing}"


@pytest.mark.parametrize("key", sorted(k for k in recorded_values() if pinned(k)))
def test_resolved_values_match_the_record(key):
    now = resolved_now_cached().get(key)
    assert now is not None, f"{key} is recorded but no longer exists"
    recorded = recorded_values()[key]
    changed = {f"{section}.{name}": (recorded[section].get(name), now[section].get(name))
               for section in set(recorded) | set(now)
               for name in set(recorded.get(section, {})) | set(now.get(section, {}))
               if recorded.get(section, {}).get(name) != now.get(section, {}).get(name)}
    assert not changed, f"{key}: resolved values changed (recorded, now): {changed}; pin them in the config file"


_CACHE: dict[str, dict] = {}


def resolved_now_cached() -> dict[str, dict]:
    if not _CACHE:
        _CACHE.update(resolved_now())
    return _CACHE


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_resolved_configs.py --write   (records every config's resolved values)")
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    # every key; the ones following the defaults keep their first record (what they resolved to before issue 19)
    values = {**resolved_now(), **{k: v for k, v in recorded_values().items() if not pinned(k)}}
    # one line per config: a changed value shows as that config's line in a diff
    lines = [f"{json.dumps(key)}: {json.dumps(values[key], sort_keys=True)}" for key in sorted(values)]
    RECORD.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"wrote {len(values)} resolved configs to {RECORD}")
