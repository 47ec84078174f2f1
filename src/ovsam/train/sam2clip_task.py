"""SAM2CLIP distillation: a frozen SAM image encoder teaches the adapter on frozen CLIP stages.

Images (an SA-1B-style folder, or every image a COCO/LVIS file lists) are resized so the long side
is 1024 and padded, SAM-normalised, and fed to both sides: the teacher's ``256x64x64``
embedding (cached on disk under ``RUN/teacher_features`` on first use, named by the image
file and a checksum of the teacher's weights, each file written atomically and fsynced; a
damaged one is recomputed and rewritten, with a warning naming it; files named by an older ovsam
without the teacher are not read again: delete them to free the space) is the target of the
student = CLIP tower stages → :class:`~ovsam.ov.sam2clip.SAM2CLIPAdapter`; the loss is the MSE.
The adapter's ``pos_embed`` buffer stays zero unless the teacher is a SAM ViT (then it is copied
from the teacher, as the official code copies SAM ViT-H's).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ovsam.build import build_model
from ovsam.checkpoint import read_failure
from ovsam.clip.factory import create_model
from ovsam.data.instances import AnnotatedImages, ImageFolder
from ovsam.fileio import atomic_write
from ovsam.modeling.common import weights_checksum
from ovsam.ov.sam2clip import SAM2CLIPAdapter
from ovsam.train.config import TrainConfig
from ovsam.train.run_data import require_items
from ovsam.transforms import ResizeLongestSide


def teacher_fingerprint(image_encoder: nn.Module) -> bytes:
    """Names the teacher's weights in the cache keys: a run restarted with another teacher
    (allowed before its first checkpoint) must not reuse the old one's targets."""
    return repr(weights_checksum(image_encoder)).encode()


class Sam2ClipTask:
    """The distillation task (see the module docstring)."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        if config.annotations:
            self.images: ImageFolder | AnnotatedImages = AnnotatedImages(
                config.annotations, config.data
            )
        else:
            self.images = ImageFolder(config.data)
        self.num_items = len(self.images)
        require_items(config, self.num_items)  # before the teacher is built (or downloaded)
        self.item_keys = self.images.item_keys  # fingerprinted by checkpoints
        self.teacher = (
            build_model(config.teacher, config.teacher_checkpoint or None).to(device).eval()
        )
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_key = teacher_fingerprint(self.teacher.image_encoder)
        if config.random_clip:
            torch.manual_seed(config.seed)
        clip = create_model(
            config.clip_model, pretrained=None if config.random_clip else config.clip_weights
        )
        self.student = clip.visual.to(device).eval()
        for p in self.student.parameters():
            p.requires_grad_(False)
        torch.manual_seed(config.seed)
        self.trainable = SAM2CLIPAdapter(
            self.student.stage_channels,
            self.student.stage_strides,
            embed_dim=config.adapter_dim,
            depth=config.adapter_depth,
            num_heads=config.adapter_heads,
        )
        pos = getattr(self.teacher.image_encoder, "pos_embed", None)
        if isinstance(pos, torch.Tensor) and pos.shape == self.trainable.pos_embed.shape:
            self.trainable.pos_embed.copy_(pos.detach())
        self.transform = ResizeLongestSide(1024)
        self.cache = Path(config.out) / "teacher_features"

    def _image(self, index: int) -> np.ndarray:
        return self.images[index]

    def _cached_target(self, index: int) -> Path:
        """Where the teacher embedding of item ``index`` is kept: named by the image file's
        path (its bytes: any file name), size and modification time and by the teacher's
        weights, so adding, removing or replacing images in ``data``, or another teacher, never
        pairs an image with another target."""
        path = self.images.image_path(index)
        stat = path.stat()
        key = b"\0".join(
            [
                os.fsencode(path.resolve()),
                b"%d\0%d" % (stat.st_size, stat.st_mtime_ns),
                self.teacher_key,
            ]
        )
        return self.cache / f"{hashlib.sha256(key).hexdigest()[:32]}.pt"

    def _read_cached(self, path: Path) -> torch.Tensor | None:
        """The teacher embedding cached in ``path``; None, after a warning naming the file,
        when it cannot be read (e.g. cut short by a crash): it is then computed again."""
        try:
            target = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged file
            reason = str(read_failure(path, exc))
        else:
            if isinstance(target, torch.Tensor):
                return target
            reason = f"{path} holds a {type(target).__name__}, not a tensor"
        tqdm.write(
            f"warning: damaged teacher-feature cache: {reason}; recomputing it", file=sys.stderr
        )
        return None

    @torch.no_grad()
    def inputs(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM-normalised ``1x3x1024x1024`` input and the teacher embedding (cached)."""
        resized = self.transform.apply_image(self._image(index))
        pixels = torch.from_numpy(resized).permute(2, 0, 1)[None].float().to(self.device)
        x = self.teacher.preprocess(pixels)
        path = self._cached_target(index)
        target = None
        if self.config.cache_teacher and path.is_file():
            target = self._read_cached(path)
        if target is None:
            with torch.autocast(self.device.type, enabled=False):  # fp32 targets under bf16
                target = self.teacher.image_encoder(x)
            if self.config.cache_teacher:
                cpu_target = target.cpu()
                atomic_write(path, lambda fh: torch.save(cpu_target, fh))
        return x, target

    def loss(
        self, module: nn.Module, items: list[int], rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        xs, targets = zip(*(self.inputs(i) for i in items), strict=True)
        with torch.no_grad():
            stages = self.student.forward_features(torch.cat(xs))
        prediction = module(stages)
        return {"loss": F.mse_loss(prediction.float(), torch.cat(targets).float())}
