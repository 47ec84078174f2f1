"""SAM2CLIP distillation speed: steps/s and peak memory of the official-size adapter.

Teacher: the real MobileSAM image encoder (features cached after the first pass, as in real
runs); student: CLIP RN50x16 (random weights unless ``--clip-weights`` is given) + the
1280-d, 5-block adapter. bf16 autocast on CUDA. Images: random 1024x768 photos-to-be written to
a temporary folder (``--images DIR`` to use real ones). Usage on the GPU machine::

    .venv/bin/python benchmarks/bench_distill.py --steps 30 --batch-size 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ovsam.distributed import DistInfo
from ovsam.train.config import TrainConfig
from ovsam.train.engine import Trainer
from ovsam.train.sam2clip_task import Sam2ClipTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--clip-weights", default=None, help="tag or file (default: random)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        if images is None:
            images = Path(tmp) / "images"
            images.mkdir()
            rng = np.random.default_rng(0)
            for i in range(args.batch_size * 4):
                Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)).save(
                    images / f"{i}.png"
                )
        count = len([p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")])
        warm_steps = -(-count // args.batch_size)  # one pass fills the teacher-feature cache
        config = TrainConfig(
            data=str(images), out=str(Path(tmp) / "run"), steps=warm_steps + args.steps, batch_size=args.batch_size,
            random_clip=args.clip_weights is None, clip_weights=args.clip_weights or "openai",
            log_every=args.steps, checkpoint_every=10**9,
        )  # fmt: skip
        device = torch.device(args.device)
        task = Sam2ClipTask(config, device)
        trainer = Trainer(config, task, DistInfo(0, 1, 0, device))
        warm = trainer.train(
            stop_after=len(task.images) // args.batch_size
        )  # fills the teacher cache
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        rows = trainer.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        steps = len(rows)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(
            f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), bf16 {config.bf16 and device.type == 'cuda'}"
        )
        print(
            f"batch {args.batch_size}: {steps / seconds:.2f} steps/s ({steps * args.batch_size / seconds:.1f} images/s), peak memory {peak:.1f} GiB"
        )
        print(f"MSE: first {warm[0]['loss']:.4f} -> last {rows[-1]['loss']:.4f}")


if __name__ == "__main__":
    main()
