"""The benchmark and GPU-check scripts' own errors: one ``SCRIPT: error: ...`` line on
stderr, exit 2, no traceback, before anything is timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_mobilesam.py"
# runs the script with the upstream ``mobile_sam`` package unimportable
WITHOUT_UPSTREAM = """
import os, runpy, sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mobile_sam":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Hide())
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, timeout=300
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == "", result
    (line,) = result.stderr.strip().splitlines()
    return line


def test_a_file_that_is_no_checkpoint_is_named_not_unpickled_by_upstream(tmp_path: Path) -> None:
    """Upstream's builder was run first: a pickle.UnpicklingError traceback."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    line = _error_line(_run(str(BENCH), "--checkpoint", str(bad), "--runs", "1"))
    assert line.startswith("bench_mobilesam.py: error: ") and str(bad) in line
    assert "not a PyTorch checkpoint" in line


def test_missing_upstream_code_is_an_error_line_with_the_install_command(
    mobilesam_checkpoint: Path,
) -> None:
    result = _run("-c", WITHOUT_UPSTREAM, str(BENCH), "--checkpoint", str(mobilesam_checkpoint))
    assert _error_line(result) == (
        "bench_mobilesam.py: error: upstream MobileSAM is not installed: "
        ".venv/bin/pip install --no-deps mobilesam-mirror==1.0.0"
    )


def test_gpu_checks_refuse_a_torch_without_cuda_before_any_step(tmp_path: Path) -> None:
    """Run from another folder with the CPU venv, every GPU test was skipped and the script
    still exited 0; relative paths broke outside the checkout."""
    if _run("-c", "import torch, sys; sys.exit(torch.cuda.is_available())").returncode:
        pytest.skip("this machine has CUDA: the refusal cannot be shown")
    script = ROOT / "scripts" / "gpu_checks.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(script), "out"], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and not (tmp_path / "out").exists(), result
    assert result.stderr.startswith(f"gpu_checks.sh: error: {sys.executable} cannot run CUDA (")
    assert "make an environment with a CUDA torch and pass PYTHON=its/python" in result.stderr
