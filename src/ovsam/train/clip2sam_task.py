"""CLIP2SAM training: the decoder head and FPN learn masks and classes on frozen features.

Frozen: the CLIP tower and SAM2CLIP adapter (``adapter_checkpoint`` = a ``sam2clip`` run's
checkpoint) and SAM's prompt encoder (taken from ``teacher``, whose mask decoder also initialises
the head's, as the official code starts from SAM's). Trained: the CLIP2SAM head + FPN. An adapter
distilled with another ``clip_model``, CLIP weights or ``teacher`` than the run's is refused
(:func:`~ovsam.train.adapter_run.check_adapter_run`: read from the sam2clip run's ``config.json``, so
a bare adapter file, outside its run folder, cannot be checked).

Per image (large-scale jitter to 1024² when ``lsj``, from ``lsj_min_scale`` to 2x, flipped at
random with ``lsj_flip``; instances under ``min_mask_area`` pixels afterwards dropped: the
official pipeline's 0.9, flips and 32 px are clip2sam's defaults): ``prompts_per_image``
prompts on the instances of the supervised classes (``supervised_vocabulary``, e.g.
``coco_base``; empty = all of ``vocabulary``; ``dataset`` = the annotation file's categories),
repeated as needed, as the official recipe does: 21 of 40 by their ground-truth box, the rest
by a random point inside the mask (:func:`prompted_instances`). Losses, weighted as the
official configs (2 / 5 / 5):
cross-entropy of the region embedding (pooled with the ground-truth box) against the text bank
of ``vocabulary`` + a background class (weight 0.1): as in the official COCO run, the bank holds
all 80 classes and the 17 novel ones, never supervised, stay in the softmax as negatives;
binary cross-entropy and dice between the 256² mask logits and the ground truth. (The official
code samples 12,544 uncertain points for the mask losses; here they are dense at 256².)

Only images with an instance of a supervised class are trained on (the official
``CocoOVDataset.filter_data``): ``num_items`` counts them. An image whose instances all fall
out of the crop (or under ``min_mask_area``) is skipped; a micro-batch's losses are the mean
over the images it used, and the engine learns how many (``used_items``). The trained module
is called exactly once per micro-batch, also with no image (see :class:`Clip2SamTrainable`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovsam.build import build_model
from ovsam.checkpoint import load_state_dict_strict
from ovsam.clip.factory import create_model
from ovsam.clip.text_bank import build_text_bank
from ovsam.data.instances import InstanceDataset, read_annotations
from ovsam.data.prompts import LSJ_FLIP_PROB, LSJ_SCALE_RANGE, large_scale_jitter, random_points
from ovsam.errors import InputError
from ovsam.ov.checkpoints import read_adapter_state
from ovsam.ov.classifier import bank_logits
from ovsam.ov.clip2sam import FPN, CLIP2SAMHead
from ovsam.ov.model import OVSamConfig
from ovsam.ov.sam2clip import SAM2CLIPAdapter
from ovsam.train.adapter_run import adapter_source, check_adapter_run, keep_adapter_copy
from ovsam.train.config import TrainConfig, supervised_field
from ovsam.train.engine import USED_ITEMS
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


class HeadInputs(NamedTuple):
    """What the trained head takes of one image: the frozen adapter embedding, CLIP stages and
    dense positional encoding, and its P prompts (SAM prompt-encoder embeddings + their boxes)."""

    embedding: Tensor
    stages: list[Tensor]
    pe: Tensor
    sparse: Tensor
    dense: Tensor
    boxes: Tensor


ImageOutputs = tuple[Tensor, Tensor]


def prompted_instances(
    count: int, prompts: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """The instances (of ``count`` >= 1) that an image's ``prompts`` prompts go to, in prompt
    order, and how many prompts (the first) are boxes; the rest are random points inside.

    The official recipe (``OVSAMDataPreprocessor(use_point_det=True)``): the instances are
    repeated in order until there are ``prompts`` (an image with more keeps its first
    ``prompts``) and shuffled; ``prompts // 2 + 1`` of them are boxes (21 of 40).
    """
    chosen = np.resize(np.arange(count), prompts)  # repeated in order, or the first prompts
    return chosen[rng.permutation(prompts)], min(prompts, prompts // 2 + 1)


class Clip2SamTrainable(nn.Module):
    """The trained parts: ``fpn_neck`` and ``mask_decoder`` (the CLIP2SAM head).

    ``forward`` takes a whole micro-batch, so that DDP sees one forward per backward (a second
    call per backward breaks its gradient reduction), and also runs for an empty one."""

    def __init__(self, fpn_neck: FPN, mask_decoder: CLIP2SAMHead) -> None:
        super().__init__()
        self.fpn_neck, self.mask_decoder = fpn_neck, mask_decoder

    def forward(self, images: list[HeadInputs]) -> tuple[list[ImageOutputs], Tensor]:
        """Per image ``(mask logits Px1x256x256, region embeddings PxD)`` for its P prompts,
        and a zero computed from every trained parameter: added to the loss, it gives each
        parameter a gradient at every step (zero where the images did not use it), so that
        every rank reduces the same gradients, whichever FPN levels (or no image) it used."""
        outputs = []
        for image in images:
            masks, _ = self.mask_decoder(image.embedding, image.pe, image.sparse, image.dense)
            regions = self.mask_decoder.region_embeddings(self.fpn_neck(image.stages), image.boxes)
            outputs.append((masks, regions))
        zero = torch.stack([p.sum() for p in self.parameters() if p.requires_grad]).sum() * 0.0
        return outputs, zero


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

    #: each region is pooled from one FPN level, but the trained module's zero term reaches
    #: every parameter at every step: DDP need not look for unused ones
    find_unused_parameters = False
    #: the items trained on (runs saved before this rule counted every annotated image)
    data_rule = "images holding an instance of a supervised class"

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        check_adapter_run(config)  # before anything is built
        self.config, self.device = config, device
        data = read_annotations(config.annotations)
        vocab = self._vocabulary(config.vocabulary, data["categories"])
        # annotations matched to classes by name_key: LVIS's aerosol_can is 'aerosol can'
        bank_index = {name_key(name): i for i, name in enumerate(vocab.classes)}
        supervised = vocab.classes
        if config.supervised_vocabulary:
            supervised = self._vocabulary(config.supervised_vocabulary, data["categories"]).classes
            outside = [n for n in supervised if name_key(n) not in bank_index]
            if outside:
                raise InputError(
                    f"supervised_vocabulary={config.supervised_vocabulary!r} has classes that "
                    f"vocabulary={config.vocabulary!r} lacks ({', '.join(map(repr, outside[:3]))})"
                    ": the classes trained on must be in the text bank (--set "
                    "supervised_vocabulary= trains on all of the vocabulary's)"
                )
        self.class_of = {name_key(n): bank_index[name_key(n)] for n in supervised}
        # only the supervised instances, and the images holding one (the official filter_data)
        self.dataset = InstanceDataset(
            data, config.data, lambda category: name_key(str(category["name"])) in self.class_of
        )
        if not len(self.dataset):
            field = supervised_field(config)
            raise InputError(
                f"{config.annotations} has no instance of a class of {field}="
                f"{getattr(config, field)!r}: nothing to train on (dataset uses its own)"
            )
        self.num_items = len(self.dataset)
        self.item_keys = self.dataset.item_keys  # fingerprinted by checkpoints
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
            path = adapter_source(config)  # the run's own copy once it has trained
            load_state_dict_strict(self.adapter, read_adapter_state(path), source=str(path))
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

    @staticmethod
    def _vocabulary(name: str, categories: list[dict[str, object]]) -> Vocabulary:
        """A vocabulary setting: ``dataset`` = the annotation file's ``categories``."""
        if name == "dataset":
            return category_vocabulary("dataset", [str(c["name"]) for c in categories])
        return load_vocabulary(name)

    def _prepare(
        self, index: int, rng: np.random.Generator
    ) -> tuple[Tensor, np.ndarray, list[int]] | None:
        """Image ``index`` augmented and padded to 1024² (``1x3x1024x1024``), its instances'
        masks in that frame and their text-bank classes; None when no instance is left."""
        item = self.dataset[index]  # the supervised instances only (the dataset is filtered)
        if not item.names:  # every mask of the image was empty
            return None
        masks = item.masks
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
        labels = [self.class_of[name_key(n)] for n, v in zip(item.names, kept, strict=True) if v]
        frame = np.zeros((int(kept.sum()), 1024, 1024), dtype=bool)  # padded like the pixels
        frame[:, : masks.shape[1], : masks.shape[2]] = masks[kept]
        pixels = torch.from_numpy(image).permute(2, 0, 1).float().to(self.device)
        pixels = (pixels - self.pixel_mean) / self.pixel_std
        pixels = F.pad(pixels, (0, 1024 - pixels.shape[2], 0, 1024 - pixels.shape[1]))
        return pixels[None], frame, labels

    def start_run(self, resumed: bool) -> None:
        """Keep the run's copy of its adapter (:mod:`ovsam.train.adapter_run`)."""
        if self.config.adapter_checkpoint:
            keep_adapter_copy(self.config, self.adapter.state_dict(), resumed)

    def loss(
        self, module: nn.Module, items: list[int], rng: np.random.Generator
    ) -> dict[str, Tensor]:
        """Losses of one micro-batch: the mean over the images with an instance left after
        augmentation (``used_items`` of them; none gives zeros), plus the trained module's zero
        term. ``module`` is called once, whatever the number of images (see
        :class:`Clip2SamTrainable`)."""
        images = []
        for index in items:  # each image's augmentation, then its prompts: the rng's order
            prepared = self._prepare(index, rng)
            if prepared is not None:
                images.append(self._head_inputs(*prepared, rng))
        outputs, zero = module([inputs for inputs, _, _ in images])
        parts = {key: zero for key in LOSS_WEIGHTS}  # the same keys on every rank
        for (_, masks, labels), (logits, regions) in zip(images, outputs, strict=True):
            for key, value in self._image_losses(logits, regions, masks, labels).items():
                parts[key] = parts[key] + value / len(images)
        total = sum(LOSS_WEIGHTS[k] * parts[k] for k in LOSS_WEIGHTS)  # each part holds zero
        return {"loss": total, **parts, USED_ITEMS: torch.tensor(float(len(images)))}

    def _head_inputs(
        self,
        x: Tensor,
        masks: np.ndarray,
        labels: list[int],
        rng: np.random.Generator,
    ) -> tuple[HeadInputs, np.ndarray, list[int]]:
        """The trained head's inputs for the ``prompts_per_image`` prompts of one prepared
        image (:func:`prompted_instances`), with their instances' masks and classes."""
        order, half = prompted_instances(len(masks), self.config.prompts_per_image, rng)
        masks, labels = masks[order], [labels[i] for i in order]
        boxes = torch.tensor(
            [
                [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                for ys, xs in (np.nonzero(m) for m in masks)
            ],
            dtype=torch.float32,
            device=self.device,
        )
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
        return HeadInputs(embedding, list(stages), pe, sparse, dense, boxes), masks, labels

    def _image_losses(
        self, logits: Tensor, regions: Tensor, masks: np.ndarray, labels: list[int]
    ) -> dict[str, Tensor]:
        """CE of the regions' classes, BCE and dice of the mask logits, for one image."""
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
