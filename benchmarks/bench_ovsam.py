"""FLOPs and CPU latency of Open-Vocabulary SAM next to the SAM + CLIP crop baselines.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (exact
shapes, no compute) for one 1024² image and one box prompt; GMACs = GFLOPs / 2 (the paper's
"GFLOPs" column counts multiply-accumulates). Rows:

- OV-SAM: CLIP RN50x16 trunk + SAM2CLIP adapter + FPN, prompt encoder + CLIP2SAM decoder,
  region recognition (RoIAlign'd FPN → ``roi_conv``; frozen-CLIP RoI → attention pool);
- Feature-Crop: SAM ViT-H encoder + decoder, and CLIP RN50x16 run once on the 1024² image
  (region features cropped from its stride-32 map, attention-pooled);
- Image-Crop: SAM ViT-H encoder + decoder, and CLIP RN50x16 on the 384² crop of the region.

CPU latency (random weights; timing does not depend on values; medians of ``--runs`` runs after
a warm-up): OV-SAM image encoding, and per prompt the decoder + recognition with a 1,203-class
(LVIS) and a 21,843-class (ImageNet-21k) bank. Usage: ``.venv/bin/python benchmarks/bench_ovsam.py [--no-latency] [--runs 3]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from _common import load_average, median_seconds, positive_int, run_main
from torch.utils.flop_counter import FlopCounterMode

from ovsam.build import get_model_entry
from ovsam.clip.config import get_clip_config
from ovsam.clip.model import build_vision_tower
from ovsam.clip.text_bank import TextBank
from ovsam.ov import build_ovsam
from ovsam.ov.predictor import OVSamPredictor
from ovsam.vocab import load_vocabulary

PAPER_GMACS = {"OV-SAM": 1180, "Feature-Crop": 3545, "Image-Crop": 3748}
PAPER_PARAMS_M = {"OV-SAM": 304, "Feature-Crop": 808, "Image-Crop": 808}


def gflops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def decoder_gflops(model: torch.nn.Module, embedding: torch.Tensor) -> float:
    box = torch.tensor([[100.0, 100.0, 600.0, 700.0]])

    def run() -> None:
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, False)

    return gflops(run)


def count_flops() -> None:
    print("FLOPs of one 1024² image + one box prompt (meta tensors)")
    with torch.device("meta"):
        ovsam = build_ovsam()
        sam = get_model_entry("sam_vit_h").builder()
        clip = build_vision_tower(get_clip_config("RN50x16"))
        image = torch.randn(1, 3, 1024, 1024)
        embedding = torch.randn(1, 256, 64, 64)
        rows: dict[str, dict[str, float]] = {}
        stages = ovsam.image_encoder.backbone.forward_features(image)
        trunk = gflops(lambda: ovsam.image_encoder.backbone.forward_features(image))
        adapter = gflops(lambda: ovsam.image_encoder.neck(stages))
        fpn = gflops(lambda: ovsam.fpn_neck(stages))
        head = ovsam.mask_decoder
        recog = gflops(lambda: head.roi_conv(torch.randn(1, 256, 12, 12)).mean((2, 3)))
        recog += gflops(lambda: ovsam.backbone.pool(torch.randn(1, 3072, 12, 12)))
        rows["OV-SAM"] = {
            "image": trunk + adapter + fpn,
            "prompt": decoder_gflops(ovsam, embedding) + recog,
            "params": sum(p.numel() for p in ovsam.parameters()) / 1e6,
        }
        sam_image = gflops(lambda: sam.image_encoder(image))
        sam_decoder = decoder_gflops(sam, embedding)
        sam_params = sum(p.numel() for p in sam.parameters()) / 1e6
        clip_params = sum(p.numel() for p in clip.parameters()) / 1e6
        pool = gflops(lambda: clip.pool(torch.randn(1, 3072, 12, 12)))
        rows["Feature-Crop"] = {
            "image": sam_image + trunk,
            "prompt": sam_decoder + pool,
            "params": sam_params + clip_params,
        }
        crop = gflops(lambda: clip(torch.randn(1, 3, 384, 384)))
        rows["Image-Crop"] = {
            "image": sam_image,
            "prompt": sam_decoder + crop,
            "params": sam_params + clip_params,
        }
    print(
        f"{'method':<13} {'image GFLOPs':>13} {'prompt GFLOPs':>14} {'total GMACs':>12} {'paper':>6} {'params M':>9} {'paper':>6}"
    )
    for name, row in rows.items():
        total = (row["image"] + row["prompt"]) / 2
        print(
            f"{name:<13} {row['image']:>13.1f} {row['prompt']:>14.1f} {total:>12.0f} {PAPER_GMACS[name]:>6} "
            f"{row['params']:>9.1f} {PAPER_PARAMS_M[name]:>6}"
        )
    print(
        f"(OV-SAM image path: CLIP trunk {trunk / 2:.0f} + adapter {adapter / 2:.0f} + FPN {fpn / 2:.0f} GMACs)"
    )


def random_bank(name: str, dim: int) -> TextBank:
    vocab = load_vocabulary(name)
    return TextBank(
        vocab.classes,
        F.normalize(torch.randn(len(vocab), dim), dim=-1),
        torch.arange(len(vocab)),
        name,
    )


def latency(runs: int) -> None:
    torch.manual_seed(0)
    predictor = OVSamPredictor(build_ovsam())
    image = np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    encoding = median_seconds(lambda: predictor.set_image(image), runs)
    print(
        f"\nCPU ({torch.get_num_threads()} threads, load {load_average()}, median of {runs} runs): "
        f"OV-SAM image encoding {encoding:.1f} s"
    )
    box = np.array([200.0, 150.0, 700.0, 600.0])
    for name in ("lvis", "imagenet21k"):
        predictor.set_text_bank(random_bank(name, 768))
        decode = median_seconds(lambda: predictor.predict(box=box), runs)
        print(
            f"decode + recognise one box, {len(predictor.bank):>6}-class bank: {decode * 1e3:.0f} ms"
        )
    print(f"load average at end {load_average()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=positive_int, default=3,
        help="timed latency runs, median reported (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--no-latency", action="store_true",
        help="count FLOPs only, skip the CPU latency (default: latency measured)",
    )  # fmt: skip
    args = parser.parse_args()
    count_flops()
    if not args.no_latency:
        latency(args.runs)
    return 0


if __name__ == "__main__":
    run_main(main)
