"""Open-Vocabulary SAM: one CLIP image tower feeding SAM's prompt pipeline and CLIP recognition.

``OVSam`` is a :class:`~ovsam.modeling.sam.Sam` (same preprocessing, SAM's pixel
normalisation, resize-longest-side 1024 + padding, mask post-processing), whose image encoder is
the frozen CLIP tower + :class:`~ovsam.ov.sam2clip.SAM2CLIPAdapter` and whose mask decoder is
:class:`~ovsam.ov.clip2sam.CLIP2SAMHead`; ``fpn_neck`` turns the CLIP stages into the pyramid the
head pools regions from. Key layout (our checkpoints): ``image_encoder.backbone.*`` (CLIP visual,
OpenAI names), ``image_encoder.neck.*``, ``fpn_neck.*``, ``prompt_encoder.*`` (SAM's),
``mask_decoder.*`` (the official ``OVSAMHead`` names).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from numbers import Integral, Real

import torch
from torch import Tensor, nn

from ovsam.clip.config import get_clip_config
from ovsam.clip.model import RandomWeightsFlag, build_vision_tower
from ovsam.errors import InputError
from ovsam.modeling.prompt_encoder import PromptEncoder
from ovsam.modeling.sam import Sam
from ovsam.ov.clip2sam import FPN, CLIP2SAMHead
from ovsam.ov.roi_align import roi_align
from ovsam.ov.sam2clip import SAM2CLIPAdapter

IMAGE_SIZE = 1024
PROMPT_DIM = 256
#: Largest ``logit_scale``: its exp (the cosine multiplier) must stay a finite float32.
LOGIT_SCALE_MAX = 88.0


@dataclass(frozen=True)
class OVSamConfig:
    """Architecture and recognition settings (stored inside our checkpoints).

    ``roi_size``: RoIAlign output of the head (12 in the COCO configs, 7 for LVIS / the demo).
    ``alpha_seen`` / ``alpha_unseen``: weight of the frozen-CLIP probability in the geometric
    fusion for classes seen in training (and background) / unseen ones. ``logit_scale``:
    log of the cosine multiplier (4.6052 → x100). ``seen_vocabulary``: the built-in vocabulary
    the decoder was trained on, or its class names (decides which names count as seen).
    ``adapter_dim`` / ``adapter_depth`` / ``adapter_heads``: width, blocks and attention heads
    of the SAM2CLIP adapter (defaults: the official ones; files saved without them load so).
    ``clip_weights``: the CLIP weights the backbone holds, whose text tower must embed the class
    names: a registered tag (``openai``), or the name of the file they came from with its
    sha256 in ``clip_weights_sha256``; '' when not recorded (files saved before it was).
    """

    clip_model: str = "RN50x16"
    roi_size: int = 12
    alpha_seen: float = 0.1
    alpha_unseen: float = 0.9
    logit_scale: float = 4.6052
    seen_vocabulary: str | tuple[str, ...] = "coco_base"
    adapter_dim: int = 1280
    adapter_depth: int = 5
    adapter_heads: int = 16
    clip_weights: str = ""
    clip_weights_sha256: str = ""

    def __post_init__(self) -> None:
        """Check every setting's type and range (a ``ValueError`` naming the first bad one):
        they come from files too. Numbers are stored as Python ``int`` / ``float`` and class
        names as a tuple."""
        vocabulary = self.seen_vocabulary
        if not isinstance(vocabulary, str):  # class names (a list once read from JSON)
            if isinstance(vocabulary, Iterable) and not isinstance(vocabulary, (bytes, Mapping)):
                vocabulary = tuple(vocabulary)
            if not isinstance(vocabulary, tuple) or not all(isinstance(n, str) for n in vocabulary):
                raise ValueError(
                    f"seen_vocabulary must be a name or a list of names, got {vocabulary!r}"
                )
            object.__setattr__(self, "seen_vocabulary", vocabulary)
        for name in ("clip_model", "clip_weights", "clip_weights_sha256"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("roi_size", "adapter_dim", "adapter_depth", "adapter_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.adapter_dim % self.adapter_heads:
            raise ValueError(
                f"adapter_dim {self.adapter_dim} must be a multiple of adapter_heads "
                f"{self.adapter_heads}"
            )
        for name, low, high in (
            ("alpha_seen", 0.0, 1.0),
            ("alpha_unseen", 0.0, 1.0),
            ("logit_scale", -math.inf, LOGIT_SCALE_MAX),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not low <= value <= high:
                bounds = f"at most {high:g}" if low == -math.inf else f"in [{low:g}, {high:g}]"
                raise ValueError(f"{name} must be a number {bounds}, got {value!r}")
            object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class OVSamImageEncoder(nn.Module):
    """CLIP tower + SAM2CLIP adapter: ``Bx3x1024x1024`` (SAM-normalised) → ``Bx256x64x64``."""

    img_size = IMAGE_SIZE

    def __init__(self, backbone: nn.Module, neck: SAM2CLIPAdapter) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward_all(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The SAM embedding and the four CLIP stage maps."""
        stages = self.backbone.forward_features(images)
        return self.neck(stages), stages

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_all(images)[0]


class OVSam(RandomWeightsFlag, Sam):
    """Open-Vocabulary SAM (sub-modules injected; see :func:`build_ovsam` for the official one).

    ``random_weights`` stays True until weights are loaded (:class:`RandomWeightsFlag`)."""

    def __init__(
        self,
        config: OVSamConfig,
        image_encoder: OVSamImageEncoder,
        fpn_neck: FPN,
        prompt_encoder: PromptEncoder,
        mask_decoder: CLIP2SAMHead,
    ) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder)  # type: ignore[arg-type]
        self.config = config
        self.fpn_neck = fpn_neck

    @property
    def backbone(self) -> nn.Module:
        return self.image_encoder.backbone

    def encode(self, images: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``(embedding Bx256x64x64, CLIP stages, FPN levels)`` of preprocessed images."""
        embedding, stages = self.image_encoder.forward_all(images)
        return embedding, stages, self.fpn_neck(stages)

    def head_region_embeddings(self, fpn_levels: list[Tensor], boxes: Tensor) -> Tensor:
        """CLIP2SAM region embeddings ``BxD`` for ``Bx4`` XYXY boxes in the 1024 frame."""
        return self.mask_decoder.region_embeddings(fpn_levels, boxes)

    def clip_region_embeddings(self, last_stage: Tensor, boxes: Tensor) -> Tensor:
        """Frozen-CLIP embeddings ``BxD``: RoIAlign of the stride-32 map at the attention
        pool's native grid, then the pool (the official ``open_voc_inference``)."""
        side = self.backbone.image_size // 32
        rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)
        return self.backbone.pool(roi_align(last_stage, rois, side, 1 / 32))

    def fuse_for_inference(self) -> OVSam:
        """Nothing to fold (the CLIP tower keeps its BatchNorms); returns ``self``."""
        return self.eval()


def check_pyramid_clip(clip_model: str) -> None:
    """Refuse (:class:`InputError`) a CLIP whose image tower is no four-stage pyramid at strides
    4/8/16/32 (the ResNets and ConvNeXts are): OV-SAM's adapter, FPN and RoI pooling are built
    for one. A ViT gives every stage at its patch stride."""
    vision = get_clip_config(clip_model).vision
    if vision.kind == "vit":
        raise InputError(
            f"clip_model={clip_model!r} is a ViT (all its maps at stride {vision.patch_size}): "
            "OV-SAM needs a CLIP image tower with stages at strides 4, 8, 16 and 32 (a ResNet "
            "such as RN50x16, or a ConvNeXt)"
        )


def build_ovsam(config: OVSamConfig | None = None) -> OVSam:
    """The architecture ``config`` describes (default: the official one): CLIP
    ``config.clip_model`` + adapter of the config's size + FPN + head, random.
    :class:`InputError` for a CLIP that is no 4-level pyramid (:func:`check_pyramid_clip`)."""
    config = config or OVSamConfig()
    check_pyramid_clip(config.clip_model)
    clip_config = get_clip_config(config.clip_model)
    backbone = build_vision_tower(clip_config)
    channels = backbone.stage_channels
    grid = IMAGE_SIZE // 16
    return OVSam(
        config,
        OVSamImageEncoder(
            backbone,
            SAM2CLIPAdapter(
                in_channels=channels,
                strides=backbone.stage_strides,
                embed_dim=config.adapter_dim,
                depth=config.adapter_depth,
                num_heads=config.adapter_heads,
            ),
        ),
        FPN(channels, PROMPT_DIM),
        PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        CLIP2SAMHead(PROMPT_DIM, clip_config.embed_dim, config.roi_size),
    ).eval()
