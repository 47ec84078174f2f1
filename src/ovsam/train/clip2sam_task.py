"""CLIP2SAM training: the decoder head and FPN learn masks and classes on frozen features.

Frozen: the CLIP tower and SAM2CLIP adapter (``adapter_checkpoint`` = a ``sam2clip`` run's
checkpoint) and SAM's prompt encoder (taken from ``teacher``, whose mask decoder also initialises
the head's, as the official code starts from SAM's). Trained: the CLIP2SAM head + FPN. An adapter
distilled with another ``clip_model``, CLIP weights or ``teacher`` than the run's is refused
(:func:`~ovsam.train.config.check_adapter_run`: read from the sam2clip run's ``config.json``, so
a bare adapter file, outside its run folder, cannot be checked).

Per image (large-scale jitter to 1024² when ``lsj``, from ``lsj_min_scale`` to 2x, flipped at
random with ``lsj_flip``; instances under ``min_mask_area`` pixels afterwards dropped: the
official pipeline's 0.9, flips and 32 px are clip2sam's defaults): up to
``prompts_per_image`` instances of the supervised classes (``supervised_vocabulary``, e.g.
``coco_base``; empty = all of ``vocabulary``; ``dataset`` = the annotation file's categories)
are prompted, the first half by their ground-truth box, the rest by a random point inside the
mask. Losses, weighted as the official configs (2 / 5 / 5):
cross-entropy of the region embedding (pooled with the ground-truth box) against the text bank
of ``vocabulary`` + a background class (weight 0.1): as in the official COCO run, the bank holds
all 80 classes and the 17 novel ones, never supervised, stay in the softmax as negatives;
binary cross-entropy and dice between the 256² mask logits and the ground truth. (The official
code samples 12,544 uncertain points for the mask losses; here they are dense at 256².)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovsam.build import build_model
from ovsam.checkpoint import load_state_dict_strict, read_state_dict
from ovsam.clip.factory import create_model
from ovsam.clip.text_bank import build_text_bank
from ovsam.data.instances import InstanceDataset
from ovsam.data.prompts import LSJ_FLIP_PROB, LSJ_SCALE_RANGE, large_scale_jitter, random_points
from ovsam.errors import InputError
from ovsam.ov.classifier import bank_logits
from ovsam.ov.clip2sam import FPN, CLIP2SAMHead
from ovsam.ov.model import OVSamConfig
from ovsam.ov.sam2clip import SAM2CLIPAdapter
from ovsam.train.config import TrainConfig, check_adapter_run, supervised_field
from ovsam.transforms import ResizeLongestSide
from ovsam.vocab import (
    Vocabulary,
    category_vocabulary,
    load_vocabulary,
    name_key,
    prompt_templates,
)

LOSS_WEIGHTS = {"ce": 2.0, "bce": 5.0, "dice": 5.0}
BACKGROUND_WEIGHT = 0.1


class Clip2SamTrainable(nn.Module):
    """The trained parts: ``fpn_neck`` and ``mask_decoder`` (the CLIP2SAM head)."""

    def __init__(self, fpn_neck: FPN, mask_decoder: CLIP2SAMHead) -> None:
        super().__init__()
        self.fpn_neck, self.mask_decoder = fpn_neck, mask_decoder

    def forward(
        self,
        embedding: Tensor,
        stages: list[Tensor],
        pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        boxes: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``(mask logits Px1x256x256, region embeddings PxD)`` for P prompts."""
        masks, _ = self.mask_decoder(embedding, pe, sparse, dense)
        return masks, self.mask_decoder.region_embeddings(self.fpn_neck(stages), boxes)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    return (1 - (2 * (probs * targets).sum(1) + 1) / (probs.sum(1) + targets.sum(1) + 1)).mean()


def startup_notice(config: TrainConfig) -> str | None:
    """One line on what the head will learn from, when that is not a trained SAM2CLIP adapter:
    a note for ``random_clip`` (testing mode: everything frozen is random anyway), a warning
    without ``adapter_checkpoint`` (the head then learns from a random adapter's features)."""
    if config.random_clip:
        return (
            "note: random_clip=true (testing mode): CLIP and the SAM2CLIP adapter are random, "
            "so the head learns nothing meaningful"
        )
    if not config.adapter_checkpoint:
        return (
            "warning: no adapter_checkpoint: the head learns from a random SAM2CLIP adapter; "
            "pass --set adapter_checkpoint=RUN/checkpoints/step_N.pt of a sam2clip run"
        )
    return None


class Clip2SamTask:
    """The CLIP2SAM task (see the module docstring)."""

    #: each region is pooled from one FPN level, so a step may leave other levels without grads
    find_unused_parameters = True

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        check_adapter_run(config)  # before anything is built
        self.config, self.device = config, device
        self.dataset = InstanceDataset(config.annotations, config.data)
        vocab = self._vocabulary(config.vocabulary)
        # annotations matched to classes by name_key: LVIS's aerosol_can is 'aerosol can'
        bank_index = {name_key(name): i for i, name in enumerate(vocab.classes)}
        supervised = vocab.classes
        if config.supervised_vocabulary:
            supervised = self._vocabulary(config.supervised_vocabulary).classes
            outside = [n for n in supervised if name_key(n) not in bank_index]
            if outside:
                raise InputError(
                    f"supervised_vocabulary={config.supervised_vocabulary!r} has classes that "
                    f"vocabulary={config.vocabulary!r} lacks ({', '.join(map(repr, outside[:3]))})"
                    ": the classes trained on must be in the text bank (--set "
                    "supervised_vocabulary= trains on all of the vocabulary's)"
                )
        self.class_of = {name_key(n): bank_index[name_key(n)] for n in supervised}
        if not any(name_key(name) in self.class_of for name in self.dataset.annotated_names()):
            field = supervised_field(config)
            raise InputError(
                f"{config.annotations} has no instance of a class of {field}="
                f"{getattr(config, field)!r}: nothing to train on (dataset uses its own)"
            )
        self.num_items = len(self.dataset)
        if config.random_clip:
            torch.manual_seed(config.seed)
        clip = create_model(
            config.clip_model, pretrained=None if config.random_clip else config.clip_weights
        )
        self.bank = build_text_bank(clip, vocab, prompt_templates("vild"), progress=False)
        self.backbone = clip.visual.to(device).eval()
        self.adapter = SAM2CLIPAdapter(
            self.backbone.stage_channels, self.backbone.stage_strides,
            embed_dim=config.adapter_dim, depth=config.adapter_depth, num_heads=config.adapter_heads,
        ).to(device).eval()  # fmt: skip
        if config.adapter_checkpoint:
            path = config.adapter_checkpoint
            load_state_dict_strict(self.adapter, read_state_dict(path), source=str(path))
        sam = build_model(config.teacher, config.teacher_checkpoint or None).to(device).eval()
        self.prompt_encoder = sam.prompt_encoder
        for module in (self.backbone, self.adapter, self.prompt_encoder):
            module.requires_grad_(False)
        torch.manual_seed(config.seed)
        head = CLIP2SAMHead(256, clip.embed_dim, OVSamConfig().roi_size)
        init = {k: v for k, v in sam.mask_decoder.state_dict().items() if not k.startswith("iou")}
        init["mask_tokens.weight"] = init["mask_tokens.weight"][:1]
        init = {
            k: v
            for k, v in init.items()
            if not k.startswith("output_hypernetworks_mlps.")
            or k.startswith("output_hypernetworks_mlps.0.")
        }
        head.mask_decoder.load_state_dict(init)
        self.trainable = Clip2SamTrainable(FPN(self.backbone.stage_channels), head)
        self.logit_scale = OVSamConfig().logit_scale
        self.pixel_mean, self.pixel_std = sam.pixel_mean, sam.pixel_std
        self.transform = ResizeLongestSide(1024)

    def _vocabulary(self, name: str) -> Vocabulary:
        """A vocabulary setting: ``dataset`` = the annotation file's categories."""
        if name == "dataset":
            categories = self.dataset.categories.values()
            return category_vocabulary("dataset", [c["name"] for c in categories])
        return load_vocabulary(name)

    def _prepare(
        self, index: int, rng: np.random.Generator
    ) -> tuple[Tensor, np.ndarray, list[int]] | None:
        item = self.dataset[index]
        keep = [i for i, n in enumerate(item.names) if name_key(n) in self.class_of]
        if not keep:
            return None
        masks = item.masks[keep]
        if self.config.lsj:
            image, masks = large_scale_jitter(
                item.image,
                masks,
                rng,
                scale_range=(self.config.lsj_min_scale, LSJ_SCALE_RANGE[1]),
                flip_prob=LSJ_FLIP_PROB if self.config.lsj_flip else 0.0,
            )
        else:
            image = self.transform.apply_image(item.image)
            masks = np.stack(
                [self.transform.apply_image(m.astype(np.uint8) * 255) > 127 for m in masks]
            )
        area = masks.reshape(len(masks), -1).sum(1)  # after the crop
        kept = (area >= self.config.min_mask_area) & (area > 0)
        if not kept.any():
            return None
        labels = [
            self.class_of[name_key(item.names[k])] for k, v in zip(keep, kept, strict=True) if v
        ]
        frame = np.zeros((int(kept.sum()), 1024, 1024), dtype=bool)  # padded like the pixels
        frame[:, : masks.shape[1], : masks.shape[2]] = masks[kept]
        pixels = torch.from_numpy(image).permute(2, 0, 1).float().to(self.device)
        pixels = (pixels - self.pixel_mean) / self.pixel_std
        pixels = F.pad(pixels, (0, 1024 - pixels.shape[2], 0, 1024 - pixels.shape[1]))
        return pixels[None], frame, labels

    def loss(
        self, module: nn.Module, items: list[int], rng: np.random.Generator
    ) -> dict[str, Tensor]:
        parts: dict[str, Tensor] = {}
        for index in items:
            prepared = self._prepare(index, rng)
            if prepared is None:
                continue
            for key, value in self._image_losses(module, *prepared, rng).items():
                parts[key] = parts.get(key, 0) + value / len(items)
        if not parts:  # no trainable instance in this batch: a zero loss that keeps DDP in step
            zero = sum(p.sum() for p in module.parameters()) * 0.0
            return {"loss": zero}
        parts["loss"] = sum(LOSS_WEIGHTS[k] * parts[k] for k in LOSS_WEIGHTS)
        return parts

    def _image_losses(
        self,
        module: nn.Module,
        x: Tensor,
        masks: np.ndarray,
        labels: list[int],
        rng: np.random.Generator,
    ) -> dict[str, Tensor]:
        order = rng.permutation(len(masks))[: self.config.prompts_per_image]
        masks, labels = masks[order], [labels[i] for i in order]
        boxes = torch.tensor(
            [
                [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                for ys, xs in (np.nonzero(m) for m in masks)
            ],
            dtype=torch.float32,
            device=self.device,
        )
        half = (len(masks) + 1) // 2
        points = torch.as_tensor(random_points(masks[half:], rng), device=self.device)
        with torch.no_grad():
            stages = self.backbone.forward_features(x)
            embedding = self.adapter(stages)
            pe = self.prompt_encoder.get_dense_pe()
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:half], masks=None)
            if len(points):  # a point gets SAM's "not a point" pad: two tokens, like a box
                ones = torch.ones(len(points), 1, device=self.device)
                sparse_p, dense_p = self.prompt_encoder(
                    points=(points[:, None], ones), boxes=None, masks=None
                )
                sparse, dense = torch.cat([sparse, sparse_p]), torch.cat([dense, dense_p])
        logits, regions = module(embedding, stages, pe, sparse, dense, boxes)
        target = torch.as_tensor(masks, device=self.device)[:, None].float()
        target = F.interpolate(target, size=logits.shape[-2:], mode="area")
        class_logits = bank_logits(regions.float(), self.bank, self.logit_scale)
        weight = torch.ones(class_logits.shape[1], device=self.device)
        weight[-1] = BACKGROUND_WEIGHT
        return {
            "ce": F.cross_entropy(
                class_logits, torch.tensor(labels, device=self.device), weight=weight
            ),
            "bce": F.binary_cross_entropy_with_logits(logits.float(), target),
            "dice": dice_loss(logits.float(), target),
        }
