"""Packaging: the wheel holds the package's data files but no bytecode, the sdist what the tests
and the README's commands need, and both carry SPDX licence metadata. Built offline with the
installed setuptools from a copy of the project whose folders hold bytecode, as a used tree does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("setuptools", minversion="77")  # the version pyproject.toml builds with

ROOT = Path(__file__).resolve().parents[1]
# the package folders holding data files, and what the sdist carries besides the package
DATA_DIRS = ("src/ovsam/assets", "src/ovsam/vocab/data", "src/ovsam/serve/static")
COPIED = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", ".ci", "src", "tests", "scripts",
          "benchmarks", "docs")  # fmt: skip
NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _files(root: Path, folder: str) -> set[str]:
    """The files under ``root / folder`` (paths relative to ``root``), bytecode aside."""
    return {
        path.relative_to(root).as_posix()
        for path in (root / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _has_bytecode(names: list[str]) -> bool:
    return any(name.endswith(".pyc") or "__pycache__" in name for name in names)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The sdist, the wheel and the build's output."""
    tree = tmp_path_factory.mktemp("tree")
    for name in COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name, ignore=NOT_COPIED)
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    for folder in ("src/ovsam", "tests", *DATA_DIRS):
        (tree / folder / "__pycache__").mkdir()
        (tree / folder / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"")
    code = "from setuptools import build_meta as b; b.build_sdist('dist'); b.build_wheel('dist')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dist = tree / "dist"
    return next(dist.glob("*.tar.gz")), next(dist.glob("*.whl")), done.stdout + done.stderr


def test_wheel_has_every_data_file_and_no_bytecode(built: tuple[Path, Path, str]) -> None:
    names = zipfile.ZipFile(built[1]).namelist()
    expected = {name.removeprefix("src/") for folder in DATA_DIRS for name in _files(ROOT, folder)}
    assert expected <= set(names), sorted(expected - set(names))
    assert not _has_bytecode(names)


def test_licence_is_an_spdx_expression_with_the_apache_text(
    built: tuple[Path, Path, str],
) -> None:
    wheel = zipfile.ZipFile(built[1])
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
    metadata = wheel.read(f"{info}/METADATA").decode().splitlines()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    text = wheel.read(f"{info}/licenses/LICENSE").decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply" in text
    assert "project.license" not in built[2]  # no deprecation warning about the licence


def test_sdist_holds_the_tests_and_scripts_but_no_bytecode(built: tuple[Path, Path, str]) -> None:
    """scripts/test.sh lints benchmarks/ too: an sdist without it failed at its first step."""
    with tarfile.open(built[0]) as sdist:
        names = [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]
    expected = {"LICENSE", "README.md"}.union(
        *(_files(ROOT, folder) for folder in ("tests", "scripts", "benchmarks", "docs"))
    )
    if (ROOT / ".ci" / "run").exists():
        expected.add(".ci/run")
    assert expected <= set(names), sorted(expected - set(names))
    assert not _has_bytecode(names)
