"""The files research users expect (issue 28 item 10): the Apache-2.0 LICENSE in the repository and the wheel,
`py.typed`, CITATION.cff with the papers, their BibTeX in the README, a CHANGELOG, and an API reference that
builds from the docstrings without warnings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAPERS = {"2603.02023": "PonderLM-3", "2603.01914": "AdaPonderLM", "2602.08220": "Adaptive Latent Chain-of-Thought",
          "2509.23184": "PonderLM-2", "2505.20674": "Ponder in Continuous Space"}


def test_license_is_the_full_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 11000  # the full text, not a pointer to it
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+, the package supports 3.10
    assert re.search(r'^license = "Apache-2.0"$', pyproject, flags=re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, flags=re.M)


def test_citation_cff_names_the_project_and_the_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0" and cff["authors"]
    from ponderlm.version import __version__

    assert cff["version"] == __version__
    ids = {ref["identifiers"][0]["value"].removeprefix("arXiv:") for ref in cff["references"]}
    assert ids == set(PAPERS)
    for ref in cff["references"]:
        assert ref["title"] and ref["year"] and all(a["family-names"] for a in ref["authors"])


def test_readme_has_each_papers_bibtex():
    readme = (ROOT / "README.md").read_text()
    entries = re.findall(r"@(?:article|misc)\{[^@]*?\n\}", readme)
    assert len(entries) == len(PAPERS)
    for arxiv, title_words in PAPERS.items():
        (entry,) = [e for e in entries if arxiv in e]
        assert title_words.lower() in entry.lower() and "author" in entry and "year" in entry


def test_changelog_has_the_releases():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings[:3] == ["Unreleased", "0.2.0", "0.1.0"]
    from ponderlm.version import __version__

    assert __version__ in headings


def test_wheel_ships_license_and_py_typed(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # pyproject's build requirement
    src = tmp_path / "src"
    # Built from a copy, so the build leaves no build/ or egg-info behind in the working tree.
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("ponderlm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ponderlm/py.typed" in names
    license_files = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert license_files and "Apache License" in zipfile.ZipFile(wheel).read(license_files[0]).decode()


def test_api_reference_builds_strict(tmp_path):
    # .ci/run installs the docs extra, so CI always runs this; without mkdocs it is skipped, not failed.
    pytest.importorskip("mkdocstrings", reason="pip install -e '.[docs]' to build the API reference")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "site" / "model" / "index.html").read_text()
    assert "PonderForCausalLM" in page and "from_backbone" in page  # generated from the docstrings
    pages = {p.stem for p in (ROOT / "docs" / "api").glob("*.md")}
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert {Path(next(iter(item.values()))).stem for item in nav} == pages  # every page reachable
