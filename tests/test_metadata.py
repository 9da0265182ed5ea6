"""Project metadata agrees with itself: LICENSE and CITATION.cff match pyproject.toml, README points to them."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_file_is_the_mit_license_pyproject_declares():
    assert project()["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_citation_cff_has_the_required_fields_and_the_packages_version_and_license():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert {"cff-version", "message", "title", "authors"} <= set(cff)  # required by the 1.2.0 schema
    assert all(isinstance(a, dict) and (a.get("name") or a.get("family-names")) for a in cff["authors"])
    assert cff["version"] == project()["version"] and cff["license"] == project()["license"]["text"]
    for ref in cff.get("references", []):
        assert {"type", "title", "authors"} <= set(ref)
    assert "docs/methods/CITATIONS.md" in cff["message"]


def test_readme_points_to_license_citation_and_the_methods_papers():
    readme = (ROOT / "README.md").read_text()
    for target in ("LICENSE", "CITATION.cff", "docs/methods/CITATIONS.md"):
        assert f"]({target})" in readme, target
        assert (ROOT / target).is_file()
