"""SAM2CLIP distillation speed: training step time and peak memory of the official-size adapter.

Teacher: the real MobileSAM image encoder (features cached by an untimed first pass over every
image, as in real runs); student: CLIP RN50x16 (random weights unless ``--clip-weights`` is
given) + the 1280-d, 5-block adapter. bf16 autocast on CUDA. Images: random 1024x768 photos-to-be
written to a temporary folder (``--images DIR`` to use real ones). Only the ``--steps`` training
steps are timed (no checkpoint is written, nothing is logged). Usage on the GPU machine::

    .venv/bin/python benchmarks/bench_distill.py --steps 30 --batch-size 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import load_average, positive_int, run_main, synchronize
from PIL import Image

from ovsam.cli.preflight import check_device
from ovsam.data.instances import ImageFolder
from ovsam.distributed import DistInfo
from ovsam.errors import InputError
from ovsam.train.config import TrainConfig
from ovsam.train.engine import Trainer
from ovsam.train.sam2clip_task import Sam2ClipTask


def random_images(folder: Path, count: int) -> None:
    """``count`` random 1024x768 PNG files in ``folder``."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=positive_int, default=20, help="timed training steps (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=2, help="images per step (default %(default)s)"
    )
    parser.add_argument(
        "--images", type=Path, default=None,
        help="folder of *.jpg/*.jpeg/*.png (default: 4 batches of random images)",
    )  # fmt: skip
    parser.add_argument(
        "--clip-weights", default=None,
        help="CLIP RN50x16 weights tag or file (default: random weights)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )  # fmt: skip
    args = parser.parse_args()
    check_device(args.device)
    if args.images is not None and not args.images.is_dir():
        raise InputError(f"--images {args.images}: not a folder")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        if images is None:
            images = Path(tmp) / "images"
            random_images(images, args.batch_size * 4)
        warm_steps = -(-len(ImageFolder(images)) // args.batch_size)  # covers every image
        config = TrainConfig(
            data=str(images), out=str(Path(tmp) / "run"), steps=warm_steps + args.steps,
            batch_size=args.batch_size, random_clip=args.clip_weights is None,
            clip_weights=args.clip_weights or "openai", log_every=warm_steps + args.steps,
            checkpoint_every=10**9,
        )  # fmt: skip
        task = Sam2ClipTask(config, device)
        trainer = Trainer(config, task, DistInfo(0, 1, 0, device))
        warm = trainer.train(stop_after=warm_steps)  # fills the teacher cache, untimed
        use_bf16 = config.bf16 and device.type == "cuda"
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        # the engine's steps alone: train() would also save a checkpoint at its last step
        rows = [trainer._train_step(use_bf16) for _ in range(args.steps)]
        synchronize(device)
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        speed = f"{args.steps / seconds:.2f} steps/s"
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    else:
        name, speed, peak = "cpu", f"{seconds / args.steps:.2f} s/step", "n/a"
    print(f"device {device} ({name}), bf16 {use_bf16}, load average at end {load_average()}")
    print(
        f"batch {args.batch_size}: {speed} ({args.steps * args.batch_size / seconds:.2f} images/s) "
        f"over {args.steps} steps, peak GPU memory {peak}"
    )
    print(f"MSE: first {warm[0]['loss']:.4f} -> last {rows[-1]['loss']:.4f}")
    return 0


if __name__ == "__main__":
    run_main(main)
