"""Small building blocks shared by the SAM-family modules (official key names kept)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain

import torch
from torch import nn
from torch.nn import functional as F

#: A block size with no effective bound (see :func:`cache_block`).
UNBOUNDED = 1 << 62


def cache_block(cpu_size: int, device: torch.device) -> int:
    """Size of the blocks that work on ``device`` is split into: ``cpu_size`` on the CPU, where
    blocks sized to stay in cache pay, else :data:`UNBOUNDED`, as a GPU kernel takes a whole
    tensor and splitting it only adds kernel launches (callers bound the batches they pass)."""
    return cpu_size if device.type == "cpu" else UNBOUNDED


def tensors_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Memory held by ``tensors``, in bytes."""
    return sum(t.element_size() * t.nelement() for t in tensors)


def weights_key(*modules: nn.Module) -> tuple[object, ...]:
    """Identifies the current weights of ``modules`` (these objects, their tensors' storage
    and versions): changes when any parameter or buffer (such as the prompt encoder's
    positional-encoding matrix) is replaced, moved or modified in place (``load_state_dict``
    bumps versions). Writes through ``.data`` bypass PyTorch's version counters and are not
    seen: modify weights under ``torch.no_grad()`` instead. Cheap; use
    :func:`weights_checksum` to compare weights by value."""
    return tuple(
        (id(m), tuple((t.data_ptr(), t._version) for t in chain(m.parameters(), m.buffers())))
        for m in modules
    )


@torch.no_grad()
def weights_checksum(module: nn.Module) -> tuple[object, ...]:
    """A checksum of the values of ``module``'s parameters and buffers: per tensor its dtype,
    shape, sum and position-weighted sum (float64, 12 significant digits, so that the reduction
    order does not matter). Equal for equal weights, in any copy of the module; a change of
    any value beyond that precision, or a permutation of values, gives another one. Reads
    every weight once (about 0.1 s for MobileSAM's image encoder on 2 CPU cores)."""
    tensors = list(chain(module.parameters(), module.buffers()))
    sums = []
    for t in tensors:
        flat = t.detach().flatten().double()
        ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        sums.append(torch.stack([flat.sum(), flat @ ramp]))
    values = torch.stack(sums).cpu().tolist() if sums else []
    layouts = [(t.dtype, *t.shape) for t in tensors]
    return type(module).__name__, tuple(layouts), tuple(f"{a:.12g}/{b:.12g}" for a, b in values)


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin1 -> act -> lin2`` acting on the last dimension."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``...xC -> ...xC``."""
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a ``BxCxHxW`` tensor (SAM's ``LayerNorm2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BxCxHxW -> BxCxHxW``, each pixel normalised over its C channels."""
        # Channels-last layer_norm is one fused kernel; the permutes are views.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class DerivedTensorCache:
    """Caches a tensor computed from ``source`` while autograd is off.

    The cached value is recomputed when ``source`` changes in place (``load_state_dict``
    bumps its version), moves, or changes dtype; with autograd on it is always recomputed
    so gradients flow, and while tracing (an ONNX export) so that the graph records how it
    is computed: a cached value would be baked in as a constant (SAM's dense positional
    encoding: three 1x4096x256 tensors, 16.5 -> 29 MB of ONNX).
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._value: torch.Tensor | None = None

    def get(self, source: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, reused while ``source`` is unchanged and gradients are off."""
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return compute()
        key = (source._version, source.data_ptr(), source.device, source.dtype)
        if self._value is None or self._key != key:
            self._value, self._key = compute(), key
        return self._value
