"""ovsam.cpu_allocator: glibc keeps the memory a batched CPU decode frees, instead of the
kernel faulting it in again for every chunk of prompts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from ovsam import cpu_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
#: the environment settings keep_freed_memory reads
MALLOC_SETTINGS = (cpu_allocator.OPT_OUT, "GLIBC_TUNABLES", *cpu_allocator._MALLOC_VARIABLES)

# 16 boxes decoded 6 times on two prompt workers (the real MobileSAM decoder, cached image
# tokens); prints the page faults per prompt of the last 5 decodes and whether the
# thresholds were set.
DECODES = """
import json, resource, sys
import torch
from ovsam import cpu_allocator
from ovsam.build import build_model
torch.set_num_threads(2)
model = build_model("mobilesam", checkpoint=sys.argv[1])
generator = torch.Generator().manual_seed(0)
corners = torch.rand(16, 2, 2, generator=generator) * 1024
boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
with torch.inference_mode():
    pe = model.prompt_encoder
    embedding = torch.randn(1, 256, 64, 64, generator=generator)
    cache = model.mask_decoder.build_image_cache(embedding, pe.get_dense_pe(), pe.no_mask_dense())
    sparse, _ = pe(points=None, boxes=boxes, masks=None)
    model.mask_decoder.forward_cached(cache, sparse, False)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model.mask_decoder.forward_cached(cache, sparse, False)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
print(json.dumps({"faults_per_prompt": faults / 80, "kept": cpu_allocator._applied is True}))
"""


def _decode_faults(checkpoint: Path, **env: str) -> dict:
    unset = ("THP_MEM_ALLOC_ENABLE", *MALLOC_SETTINGS)
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    result = subprocess.run(
        [sys.executable, "-c", DECODES, str(checkpoint)],
        env=environ | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc thresholds")
def test_a_batched_cpu_decode_reuses_the_memory_it_freed(mobilesam_checkpoint: Path) -> None:
    """Glibc's default thresholds handed the decode's freed buffers back to the kernel: about
    1,600 page faults per prompt on the CI machine. The first parallel decode sets them, and
    later decodes fault almost nothing."""
    kept = _decode_faults(mobilesam_checkpoint)
    default = _decode_faults(mobilesam_checkpoint, OVSAM_KEEP_FREED_MEMORY="0")
    assert kept["kept"] is True and default["kept"] is False
    if default["faults_per_prompt"] < 200:  # e.g. a kernel backing the heap with huge pages
        pytest.skip(f"glibc's defaults fault little here: {default}")
    assert kept["faults_per_prompt"] < default["faults_per_prompt"] / 10, (kept, default)


@pytest.mark.parametrize(
    "env",
    [
        {"OVSAM_KEEP_FREED_MEMORY": "0"},
        {"OVSAM_KEEP_FREED_MEMORY": " Off "},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
    ],
)
def test_the_user_can_keep_malloc_as_it_is(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in MALLOC_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not cpu_allocator._wanted()


def test_only_glibc_is_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in MALLOC_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    assert cpu_allocator._wanted() is GLIBC
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert not cpu_allocator._wanted()
