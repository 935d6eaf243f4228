"""The package's imports point down only: base ← data ← models ← engine ← {inference, study, report} ← the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fasttrain"

# Lower number = lower layer. The bottom holds what every layer reads: errors, atomic writes and the lock,
# the schema machinery, the typed config, the run-directory names and the suite manifest (all torch-free).
LAYERS = {
    "fasttrain.errors": 0, "fasttrain.atomic": 0, "fasttrain.schema": 0, "fasttrain.rundir": 0,
    "fasttrain.config": 0, "fasttrain.suite_manifest": 0,
    "fasttrain.data": 1,
    "fasttrain.models": 2,
    "fasttrain.engine": 3,
    "fasttrain.inference": 4, "fasttrain.study": 4, "fasttrain.report": 4,
    "fasttrain.__main__": 5,
}
# The config checks a [model] table against the models' torch-free registry (the builders' annotated
# signatures are the knob schema) and asks the augmentation module which modes exist: it consults the
# owners of those rules instead of keeping copies.
RULE_OWNERS = {
    "fasttrain.config": {"fasttrain.models", "fasttrain.models.registry", "fasttrain.data.pipelines.augment"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> tuple[str, int]:
    if name == "fasttrain":  # the package's __init__: its version only
        return name, 0
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


def imported_modules(path: Path) -> set[str]:
    """Every fasttrain module `path` imports, at module level or inside a function; TYPE_CHECKING blocks excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists())
    return {name for name in found if name == "fasttrain" or name.startswith("fasttrain.")} - {"fasttrain"}


def test_imports_point_down_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        _, level = layer_of(importer)
        for imported in imported_modules(path):
            if imported in RULE_OWNERS.get(importer, ()):
                continue
            _, imported_level = layer_of(imported)
            if imported_level > level:
                upward.append(f"{importer} (layer {level}) imports {imported} (layer {imported_level})")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


# A command line may compose the top-layer packages: the study CLI renders the report of the suite it ran.
CLI_COMPOSITION = {("fasttrain.study.__main__", "fasttrain.report.render")}


def test_top_layer_packages_do_not_import_each_other():
    """inference, study and report each stand on the engine alone; none reaches into another (CLIs may compose)."""
    tops = {"fasttrain.inference", "fasttrain.study", "fasttrain.report"}
    crossing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        own, _ = layer_of(importer)
        if own not in tops:
            continue
        crossing += [f"{importer} imports {name}" for name in imported_modules(path)
                     if layer_of(name)[0] in tops - {own} and (importer, name) not in CLI_COMPOSITION]
    assert not crossing, "\n".join(crossing)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: a data module importing the engine, even inside a function, is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from fasttrain.engine.trainer import Trainer\n", encoding="utf-8")
    assert "fasttrain.engine.trainer" in imported_modules(probe)
