"""The documents the project points to ship with it: docs/STUDY.md holds the study's facts and figures, and every
reference to it (README, configs, code) names that file by a path that resolves."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "STUDY.md"


def test_the_study_document_ships_with_its_figures():
    text = STUDY.read_text(encoding="utf-8")
    # the figures the code and configs cite: normalisation, split, reported top-1 per model, parameter counts
    for figure in ("0.4802, 0.4481, 0.3975", "0.2302, 0.2265, 0.2262", "val_ratio = 0.2", "0.5509", "0.5603",
                   "0.5897", "0.5403", "0.5929", "0.4163", "0.5279", "11.27 M", "21.133 M"):
        assert figure in text, figure


def shipped_text_files():
    yield ROOT / "README.md"
    yield from (ROOT / "docs").glob("*.md")
    yield from (ROOT / "configs").rglob("*.toml")
    yield from (ROOT / "fasttrain").rglob("*.py")
    yield from (ROOT / "kernels_bench").rglob("*.py")


def test_every_reference_to_the_study_names_the_shipped_file():
    mentions = []
    for path in shipped_text_files():
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for found in re.finditer(r"[\w./-]*STUDY\.md", line):
                mentions.append((path.relative_to(ROOT), line_no, found.group(0)))
    assert mentions, "nothing points to the study's document"
    wrong = [m for m in mentions if m[2] != "docs/STUDY.md"]
    assert not wrong, f"references that do not name docs/STUDY.md (from the repository root): {wrong}"


def test_readme_links_resolve_inside_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://|#", target)]
    assert "docs/STUDY.md" in links
    missing = [target for target in links if not (ROOT / target.split("#")[0]).exists()]
    assert not missing, missing
