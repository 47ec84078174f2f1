"""A test-session memo of the image encoders' passes: TinyViT's (MobileSAM), OV-SAM's (CLIP
tower + SAM2CLIP adapter) and the CLIP towers' stage maps alone (frozen in training).

Many tests embed the same pictures (the sample photo, the synthetic scenes) with the same
weights: about 150 TinyViT passes of ~1 s each on a 2-core CPU, a third of the suite's time,
and OV-SAM passes of ~3 s; a clip2sam run on one picture without LSJ passes the frozen
tower over the same pixels at every step. In eval mode without autograd a pass is a pure
function of the weights and the input, so a repeated pass returns a copy of the first one's
output. The key holds the module's type, the bytes of every parameter and buffer and of the
input (SHA-256), their dtype, shape, strides and device, and the module's mode: other
weights, a changed weight, another dtype or memory layout, or a training-mode pass are
computed afresh. Forward hooks still run (they wrap ``forward``). ``OVSAM_TEST_NO_MEMO=1``
turns the memo off, for a run that computes every pass.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ovsam.clip.convnext import ConvNeXtTower
from ovsam.clip.resnet import ModifiedResNet
from ovsam.clip.vit import VisionTransformer
from ovsam.modeling.tiny_vit import TinyViT
from ovsam.ov.model import OVSamImageEncoder

#: CLIP-tower passes on smaller images (crops, 224² classifier inputs) are computed: a pass on
#: 224² costs about what hashing a ViT-B's weights does.
TOWER_MIN_PIXELS = 512 * 512
MAX_BYTES = 2 << 30  # a TinyViT pass: 4 MiB; an OV-SAM pass with RN50's stage maps: 124 MiB

_lock = threading.Lock()
_entries: OrderedDict[tuple, Any] = OrderedDict()
passes = {"computed": 0, "reused": 0}


def _digest(tensors: Iterable[Tensor]) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        data = tensor.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{data.dtype}{tuple(tensor.shape)}{tensor.stride()}".encode())
        sha.update(data.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _key(module: nn.Module, x: Tensor) -> tuple:
    state = (t for _, t in sorted(module.state_dict(keep_vars=True).items()))
    return (type(module), _digest(state), _digest([x]), str(x.device), module.training)


def _copy(out: Any) -> Any:
    """A copy of a pass's output: a tensor, or a tuple or list of outputs."""
    if isinstance(out, Tensor):
        return out.detach().clone()
    return type(out)(_copy(item) for item in out)


def _nbytes(out: Any) -> int:
    if isinstance(out, Tensor):
        return out.nbytes
    return sum(_nbytes(item) for item in out)


def memoized(
    forward: Callable[[nn.Module, Tensor], Any], min_pixels: int = 0
) -> Callable[[nn.Module, Tensor], Any]:
    """``forward`` answering a repeated eval-mode, no-autograd pass from the memo; passes on
    images of fewer than ``min_pixels`` pixels are computed (hashing the weights would cost
    about as much)."""

    @functools.wraps(forward)
    def memo_forward(self: nn.Module, x: Tensor) -> Any:
        grad = x.requires_grad or any(p.requires_grad for p in self.parameters())
        small = x.shape[-2] * x.shape[-1] < min_pixels
        if small or self.training or (torch.is_grad_enabled() and grad):
            return forward(self, x)
        key = _key(self, x)
        with _lock:
            hit = _entries.get(key)
            if hit is not None:
                _entries.move_to_end(key)
                passes["reused"] += 1
                return _copy(hit)
        out = forward(self, x)
        with _lock:
            passes["computed"] += 1
            _entries[key] = _copy(out)
            while _entries and sum(map(_nbytes, _entries.values())) > MAX_BYTES:
                _entries.popitem(last=False)
        return out

    return memo_forward


def install() -> None:
    """Memoize ``TinyViT.forward``, ``OVSamImageEncoder.forward_all`` (``forward`` calls it)
    and the CLIP towers' ``forward_features`` for this process unless
    ``OVSAM_TEST_NO_MEMO=1``."""
    if os.environ.get("OVSAM_TEST_NO_MEMO") != "1":
        TinyViT.forward = memoized(TinyViT.forward)  # type: ignore[method-assign]
        ov = OVSamImageEncoder
        ov.forward_all = memoized(ov.forward_all)  # type: ignore[method-assign]
        for kind in (ModifiedResNet, VisionTransformer, ConvNeXtTower):
            tower = memoized(kind.forward_features, min_pixels=TOWER_MIN_PIXELS)
            kind.forward_features = tower  # type: ignore[method-assign]
