"""A test-session memo of TinyViT's forward pass (MobileSAM's image encoder).

Many tests embed the same pictures (the sample photo, the synthetic scenes) with the same
real weights: about 170 encoder passes of ~1 s each on a 2-core CPU, a third of the suite's
time. In eval mode without autograd the pass is a pure function of the weights and the
input, so a repeated pass returns a copy of the first one's output. The key holds the bytes
of every parameter and buffer and of the input (SHA-256), their dtype, shape, strides and
device, and the module's mode: other weights, a changed weight, another dtype or memory
layout, or a training-mode pass are computed afresh. Forward hooks still run (they wrap
``forward``). ``OVSAM_TEST_NO_MEMO=1`` turns the memo off, for a run that computes every pass.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ovsam.modeling.tiny_vit import TinyViT

MAX_ENTRIES = 48  # 4 MiB a 1024x1024 embedding

_lock = threading.Lock()
_entries: OrderedDict[tuple, Tensor] = OrderedDict()
passes = {"computed": 0, "reused": 0}


def _digest(tensors: Iterator[Tensor]) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        data = tensor.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{data.dtype}{tuple(tensor.shape)}{tensor.stride()}".encode())
        sha.update(data.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _key(module: nn.Module, x: Tensor) -> tuple:
    state = (t for _, t in sorted(module.state_dict(keep_vars=True).items()))
    return (_digest(state), _digest(iter([x])), str(x.device), module.training)


def memoized(forward: Callable[[TinyViT, Tensor], Tensor]) -> Callable[[TinyViT, Tensor], Tensor]:
    """``forward`` answering a repeated eval-mode, no-autograd pass from the memo."""

    @functools.wraps(forward)
    def memo_forward(self: TinyViT, x: Tensor) -> Tensor:
        grad = x.requires_grad or any(p.requires_grad for p in self.parameters())
        if self.training or (torch.is_grad_enabled() and grad):
            return forward(self, x)
        key = _key(self, x)
        with _lock:
            hit = _entries.get(key)
            if hit is not None:
                _entries.move_to_end(key)
                passes["reused"] += 1
                return hit.clone()
        out = forward(self, x)
        with _lock:
            passes["computed"] += 1
            _entries[key] = out.detach().clone()
            while len(_entries) > MAX_ENTRIES:
                _entries.popitem(last=False)
        return out

    return memo_forward


def install() -> None:
    """Memoize ``TinyViT.forward`` for this process unless ``OVSAM_TEST_NO_MEMO=1``."""
    if os.environ.get("OVSAM_TEST_NO_MEMO") != "1":
        TinyViT.forward = memoized(TinyViT.forward)  # type: ignore[method-assign]
