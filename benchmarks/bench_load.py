"""Time to build a model and load its weights, with and without drawing random initial values.

``build_model`` / ``create_model`` / ``load_ovsam`` build a model that a strict load then
overwrites inside :func:`ovsam.checkpoint.weights_to_be_loaded`, which skips ``torch.nn.init``.
This script times that path ("skip init") against building the same model randomly first
("random init", what torch does by default), then loading the same file, for: MobileSAM
(``mobile_sam.pt``), CLIP RN50x16 and the official-size OV-SAM (both from files of random
weights written to a temporary folder, as no CLIP weights exist here). Medians of ``--runs``
interleaved runs after one warm-up each; ratios are skip / random in the same run. Usage::

    .venv/bin/python benchmarks/bench_load.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _common import load_average, positive_int, run_main, timed, usable_cpus

from ovsam.build import build_model, get_model_entry
from ovsam.checkpoint import load_state_dict_strict, read_state_dict
from ovsam.clip.config import get_clip_config
from ovsam.clip.factory import create_model, read_clip_state_dict
from ovsam.clip.model import CLIP
from ovsam.ov import build_ovsam, save_ovsam
from ovsam.ov.checkpoints import load_ovsam, ovsam_checkpoint_config
from ovsam.weights import resolve_weights


def random_then_load(build: Callable[[], torch.nn.Module], read: Callable[[], dict]) -> None:
    """The default path: a randomly initialised model, then a strict load over it."""
    load_state_dict_strict(build(), read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=positive_int, default=3,
        help="timed runs per model and path, after one warm-up (default %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(usable_cpus())
    mobilesam = resolve_weights("mobile_sam")
    with tempfile.TemporaryDirectory() as folder:
        clip_file, ovsam_file = Path(folder) / "rn50x16.pt", Path(folder) / "ovsam.safetensors"
        torch.save(create_model("RN50x16").state_dict(), clip_file)
        save_ovsam(build_ovsam(), ovsam_file)
        config = ovsam_checkpoint_config(ovsam_file)
        cases = {
            "MobileSAM (mobile_sam.pt)": (
                lambda: build_model("mobilesam", mobilesam, fuse=False),
                lambda: random_then_load(
                    get_model_entry("mobilesam").builder, lambda: read_state_dict(mobilesam)
                ),
            ),
            "CLIP RN50x16 (file)": (
                lambda: create_model("RN50x16", pretrained=clip_file),
                lambda: random_then_load(
                    lambda: CLIP(get_clip_config("RN50x16")),
                    lambda: read_clip_state_dict(clip_file),
                ),
            ),
            "OV-SAM RN50x16 (file)": (
                lambda: load_ovsam(ovsam_file),
                lambda: random_then_load(
                    lambda: build_ovsam(config), lambda: read_state_dict(ovsam_file)
                ),
            ),
        }
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {usable_cpus()} usable "
            f"CPUs, load average at start {load_average()}"
        )
        print(f"{'model':28s} {'skip init s':>12s} {'random init s':>14s} {'ratio':>7s}")
        for label, (skip, random) in cases.items():
            skip(), random()  # warm-up: file cache, allocator
            times: tuple[list[float], list[float]] = ([], [])
            for _ in range(args.runs):
                times[0].append(timed(skip))
                times[1].append(timed(random))
            a, b = statistics.median(times[0]), statistics.median(times[1])
            print(f"{label:28s} {a:12.2f} {b:14.2f} {a / b:7.2f}")
    print(f"median of {args.runs} runs each; load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    run_main(main)
