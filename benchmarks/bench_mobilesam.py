"""Latency of our MobileSAM next to the upstream MobileSAM code, same weights, same run.

Upstream = PyPI ``mobilesam-mirror==1.0.0`` (imported through ``tests/upstream_mobilesam.py``).
Measured: image encoder on a 1x3x1024x1024 input, and prompt encoder + mask decoder for one
point (3 masks), one box (1 mask) and a batch of 16 boxes (1 mask each; cost per prompt),
each with our plain decoder and with the per-image token cache the predictor uses
(``ovsam.modeling.image_token_cache``; its build, once per image, is timed too: upstream has
no such stage, so that row shows no upstream figure; batches go to ``torch.get_num_threads()``
parallel prompt workers, ``ovsam.modeling.prompt_workers``).
Runs of ours and upstream are interleaved so that load from other processes hits both alike;
figures are medians of ``--runs`` warm runs. CPU by default; with ``--device cuda`` every
timed call ends with a CUDA synchronize. Usage::

    .venv/bin/python benchmarks/bench_mobilesam.py [--runs 5] [--checkpoint mobile_sam] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import (
    load_average,
    median_seconds,
    positive_int,
    run_main,
    synced,
    timed,
    usable_cpus,
)
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ovsam.build import build_model  # noqa: E402
from ovsam.cli.preflight import check_device  # noqa: E402
from ovsam.errors import OVSamError  # noqa: E402
from ovsam.modeling.image_token_cache import ImageTokenCache  # noqa: E402
from ovsam.transforms import ResizeLongestSide  # noqa: E402
from ovsam.weights import resolve_weights  # noqa: E402
from upstream_mobilesam import INSTALL_HINT, build_upstream_mobilesam, decode  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "src" / "ovsam" / "assets" / "coffee.jpg"


def interleaved_medians(
    ours: Callable[[], object], upstream: Callable[[], object], runs: int, warmup: int = 1
) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``upstream``, alternating calls after ``warmup`` each."""
    for _ in range(warmup):
        ours()
        upstream()
    a, b = [], []
    for _ in range(runs):
        a.append(timed(ours))
        b.append(timed(upstream))
    return statistics.median(a), statistics.median(b)


def build_cache(model: torch.nn.Module, embedding: torch.Tensor) -> ImageTokenCache:
    """Our decoder's per-image token cache, as ``SamPredictor`` builds it."""
    prompt_encoder = model.prompt_encoder
    return model.mask_decoder.build_image_cache(
        embedding, prompt_encoder.get_dense_pe(), prompt_encoder.no_mask_dense()
    )


def decode_cached(
    model: torch.nn.Module,
    cache: ImageTokenCache,
    multimask: bool,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + our decoder on the cached image (same prompts as ``decode``)."""
    sparse, _ = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    return model.mask_decoder.forward_cached(cache, sparse, multimask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=positive_int, default=5,
        help="timed runs per stage, after one warm-up (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint", default="mobile_sam",
        help="MobileSAM checkpoint file or registered weights name (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default %(default)s)"
    )
    args = parser.parse_args(argv)
    check_device(args.device)
    device = torch.device(args.device)
    torch.set_num_threads(usable_cpus())
    checkpoint = resolve_weights(args.checkpoint)
    # ours first: it checks the file (a clear CheckpointError), upstream would only unpickle it
    ours = build_model("mobilesam", checkpoint).to(device)
    try:
        upstream = build_upstream_mobilesam(checkpoint).to(device)
    except ImportError as exc:
        raise OVSamError(f"upstream MobileSAM is not installed: {INSTALL_HINT}") from exc

    image = np.asarray(Image.open(ASSET).convert("RGB"))
    resized = ResizeLongestSide(1024).apply_image(image)
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].float().to(device)
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(16, 2, 2, generator=generator) * torch.tensor(resized.shape[1::-1])
    corners = corners.to(device)
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    point = (corners[:1, :1], torch.ones(1, 1, dtype=torch.long, device=device))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, device {device} ({where}), {torch.get_num_threads()} "
        f"threads, {usable_cpus()} usable CPUs, load average at start {load_average()}"
    )
    print(f"{'stage':43s} {'ours ms':>9s} {'upstream ms':>12s} {'ratio':>7s}")
    with torch.inference_mode():
        inputs = ours.preprocess(x), upstream.preprocess(x)
        enc = interleaved_medians(
            synced(lambda: ours.image_encoder(inputs[0]), device),
            synced(lambda: upstream.image_encoder(inputs[1]), device),
            args.runs,
        )
        rows: list[tuple[str, int, float, float | None]] = [("image encoder (1024x1024)", 1, *enc)]
        embedding = ours.image_encoder(inputs[0])
        cache = build_cache(ours, embedding)
        build = median_seconds(synced(lambda: build_cache(ours, embedding), device), args.runs)
        rows.append(("token cache build (once per image)", 1, build, None))
        cases = [
            ("decoder, 1 point, 3 masks", 1, {"points": point}, True),
            ("decoder, 1 box, 1 mask", 1, {"boxes": boxes[:1]}, False),
            ("decoder, 16 boxes, per prompt", 16, {"boxes": boxes}, False),
        ]
        for label, count, prompt, multimask in cases:
            for suffix, ours_decode in (
                ("", lambda p, m: decode(ours, embedding, m, **p)),
                (" [cached]", lambda p, m: decode_cached(ours, cache, m, **p)),
            ):
                dec = interleaved_medians(
                    synced(lambda p=prompt, m=multimask, f=ours_decode: f(p, m), device),
                    synced(
                        lambda p=prompt, m=multimask: decode(upstream, embedding, m, **p), device
                    ),
                    args.runs,
                )
                rows.append((label + suffix, count, *dec))
    for label, count, a, b in rows:
        if b is None:  # upstream has no such stage
            print(f"{label:43s} {1e3 * a / count:9.1f} {'—':>12s} {'—':>7s}")
        else:
            print(f"{label:43s} {1e3 * a / count:9.1f} {1e3 * b / count:12.1f} {a / b:7.2f}")
    print(f"median of {args.runs} warm runs each; load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    run_main(main)
