"""CPU cost of the CLIP recognition side: text-bank building and per-region recognition.

For the official OV-SAM CLIP tower (RN50x16, random weights: timing does not depend on the
values) it prints
- text-encoding throughput (names/s) with one template and with the 14-template ViLD ensemble,
  measured on a sample of each vocabulary (median of ``--runs`` passes after a warm-up batch),
  and the resulting time to build the full bank of COCO (80), LVIS (1,203) and ImageNet-21k
  (21,843) classes (``--full`` builds them for real);
- recognition cost per region: Image-Crop (crop + encode at 384² + compare) and the bank
  comparison alone, for banks of 80, 1,203 and 21,843 classes.
Usage::

    .venv/bin/python benchmarks/bench_recognition.py [--model RN50x16] [--sample 128] [--full]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import load_average, median_seconds, positive_int, run_main

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.clip.factory import create_model
from ovsam.clip.region_classifier import classify_regions
from ovsam.clip.text_bank import TextBank, build_text_bank, encode_prompts
from ovsam.image_io import load_image
from ovsam.vocab import load_vocabulary, prompt_templates

BANKS = ("coco", "lvis", "imagenet21k")


def random_bank(vocab_name: str, dim: int) -> TextBank:
    vocab = load_vocabulary(vocab_name)
    index = torch.tensor([i for i, names in enumerate(vocab.synonyms) for _ in names])
    emb = F.normalize(torch.randn(len(index), dim), dim=-1)
    return TextBank(vocab.classes, emb, index, f"random-{vocab_name}")


def text_throughput(model: torch.nn.Module, sample: int, batch: int, runs: int) -> None:
    print(
        f"\ntext encoding ({sample} names sampled per vocabulary, batches of {batch} prompts, "
        f"median of {runs} runs)"
    )
    print(
        f"{'vocabulary':<12} {'classes':>8} {'names/s (1 tpl)':>16} {'synonyms':>9} {'full bank 1 tpl':>16} {'full bank 14 tpl':>17}"
    )
    rng = np.random.default_rng(0)
    for name in BANKS:
        vocab = load_vocabulary(name)
        picks = rng.choice(len(vocab), size=min(sample, len(vocab)), replace=False)
        names = [vocab.classes[i] for i in picks]
        prompts = [f"a photo of a {n}." for n in names]
        encode_prompts(model, prompts[:batch])  # warm-up batch

        def encode_all(p: list[str] = prompts) -> None:
            for i in range(0, len(p), batch):
                encode_prompts(model, p[i : i + batch])

        rate = len(prompts) / median_seconds(encode_all, runs, warmups=0)
        total_names = sum(len(s) for s in vocab.synonyms)
        print(
            f"{name:<12} {len(vocab):>8} {rate:>16.1f} {total_names:>9} {total_names / rate:>15.0f}s "
            f"{total_names * 14 / rate:>16.0f}s"
        )


def region_cost(model: torch.nn.Module, runs: int) -> None:
    image = load_image(SAMPLE_PHOTO)
    boxes = np.array([SAMPLE_BOX] * 8, dtype=np.float32)
    print(
        f"\nrecognition per region (image crop at {model.visual.image_size}², batch of 8 regions)"
    )
    print(
        f"{'bank':<12} {'classes':>8} {'Image-Crop ms/region':>21} {'bank compare ms/region':>23}"
    )
    for name in BANKS:
        bank = random_bank(name, model.embed_dim)
        crop = median_seconds(lambda b=bank: classify_regions(model, image, b, boxes=boxes), runs)
        regions = F.normalize(torch.randn(8, model.embed_dim), dim=-1)
        compare = median_seconds(
            lambda b=bank, r=regions: b.similarity(r).softmax(-1).topk(5), runs * 4
        )
        print(f"{name:<12} {len(bank):>8} {crop / 8 * 1e3:>21.1f} {compare / 8 * 1e3:>23.3f}")


def full_builds(model: torch.nn.Module) -> None:
    print("\nfull bank builds (ViLD 14 templates, no cache)")
    for name in BANKS:
        start = time.perf_counter()
        bank = build_text_bank(
            model, load_vocabulary(name), prompt_templates("vild"), weights_id="bench", cache=False
        )
        print(f"{name:<12} {len(bank):>8} classes  {time.perf_counter() - start:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN50x16", help="CLIP model (default %(default)s)")
    parser.add_argument(
        "--sample", type=positive_int, default=128,
        help="names sampled per vocabulary for text encoding (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=positive_int, default=64, help="prompts per text batch (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=positive_int, default=3,
        help="timed runs per measurement, median reported (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--full", action="store_true",
        help="also build the full banks (slow on CPU; default: off)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model)
    print(
        f"CLIP {args.model} (random weights), torch {torch.__version__}, {torch.get_num_threads()} threads, load {load_average()}"
    )
    with torch.inference_mode():
        text_throughput(model, args.sample, args.batch, args.runs)
        region_cost(model, args.runs)
        if args.full:
            full_builds(model)
    print(f"\nload average at end {load_average()}")
    return 0


if __name__ == "__main__":
    run_main(main)
