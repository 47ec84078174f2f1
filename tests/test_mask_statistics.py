"""Band-wise full-size mask statistics equal those of the full-size logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ovsam import mask_statistics as module
from ovsam.mask_statistics import (
    cell_counts,
    interpolation_matrix,
    mask_boxes,
    mask_statistics,
    stability_scores,
    window_masks,
)


@pytest.mark.parametrize("sizes", [(5, 9, 17), (8, 3, 1), (40, 4, 41), (2, 1024, 7)])
def test_interpolation_matrix_equals_f_interpolate(sizes: tuple[int, int, int]) -> None:
    rows, size_in, size_out = sizes
    x = torch.randn(rows, size_in, generator=torch.Generator().manual_seed(size_in))
    reference = F.interpolate(x[None], size_out, mode="linear", align_corners=False)[0]
    weights = F.interpolate(torch.eye(size_in)[None], size_out, mode="linear")[0]  # its taps
    assert torch.equal(interpolation_matrix(size_in, size_out, x.device).T, weights)
    ours = x @ interpolation_matrix(size_in, size_out, x.device).T
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("frame", "size", "stride"),
    [((96, 128), (300, 400), 4), ((128, 85), (1001, 666), 4), ((64, 64), (37, 53), 4),
     ((3, 128), (7, 2000), 8), ((128, 96), (130, 97), 16)],
)  # fmt: skip
@pytest.mark.parametrize(
    ("band_elements", "dtype"),
    [(5000, torch.float32), (1 << 40, torch.float32), (5000, torch.float64)],
)  # many bands and a short last one; one band (as off the CPU) of any height; float64 logits
def test_statistics_equal_those_of_full_size_logits(
    frame: tuple[int, int],
    size: tuple[int, int],
    stride: int,
    band_elements: int,
    dtype: torch.dtype,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "BAND_ELEMENTS", band_elements)
    generator = torch.Generator().manual_seed(sum(size))
    low = torch.randn(3, 1, 16, 16, generator=generator, dtype=dtype) * 4
    logits = F.interpolate(low, frame, mode="bilinear", align_corners=False)[:, 0]
    logits[2] = -5.0  # an empty mask: stability 0, area 0
    full = F.interpolate(logits[:, None], size, mode="bilinear", align_corners=False)[:, 0]
    ours = mask_statistics(logits, size, 0.0, 1.0, stride)
    masks = full > 0
    assert ours.area.tolist() == masks.flatten(1).sum(1).tolist()
    assert ours.area[2] == 0 and ours.stability[2] == 0.0
    assert torch.equal(ours.cells, cell_counts(masks, stride))
    torch.testing.assert_close(ours.stability, stability_scores(full, 0.0, 1.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("stride", "dtype"), [(1, torch.uint8), (4, torch.uint8), (16, torch.int16)]
)
def test_cell_counts_count_the_pixels_of_each_cell(stride: int, dtype: torch.dtype) -> None:
    """Edge cells hold fewer pixels; a full 16x16 cell (256) needs int16."""
    masks = torch.rand(2, 37, 70, generator=torch.Generator().manual_seed(stride)) > 0.3
    masks[1] = True
    counts = cell_counts(masks, stride)
    assert counts.dtype == dtype
    assert counts.shape == (2, -(-37 // stride), -(-70 // stride))
    for k, r, c in np.ndindex(*counts.shape):
        cell = masks[k, r * stride : (r + 1) * stride, c * stride : (c + 1) * stride]
        assert counts[k, r, c] == cell.sum()
    assert counts[1].sum() == 37 * 70


def test_cell_counts_of_a_strip_allocate_no_more_than_its_masks() -> None:
    """A strip much thinner than a cell was padded to whole cells: ``stride`` times its
    memory (a 1x1,000,000 image asked for 125 GB)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.elements = max(Largest.elements, t.numel())
            return out

    masks = torch.rand(3, 1, 10_000, generator=torch.Generator().manual_seed(0)) > 0.5
    with Largest():
        counts = cell_counts(masks, 40)
    assert (
        counts.shape == (3, 1, 250) and counts.sum(2)[:, 0].tolist() == masks.sum((1, 2)).tolist()
    )
    assert Largest.elements <= masks.numel()


def test_mask_nms_bounds_hold_for_cells_over_46341_pixels_a_side() -> None:
    """A cell's pixel count (stride**2, images over ~11.9 M pixels long) overflowed int32 in
    the lower bound on shared pixels: two masks sharing none were dropped as duplicates."""
    from ovsam.mask_nms import mask_nms

    stride = 50_000
    cells = torch.zeros(2, 1, 4, dtype=module.cell_dtype(stride))
    cells[0, 0, 1], cells[1, 0, 1] = 30_000, 25_000  # one cell, disjoint pixels

    def disjoint(i: int, rows: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        return torch.zeros(len(rows), dtype=torch.long)

    assert mask_nms(cells, torch.tensor([0.9, 0.8]), 0.7, stride, disjoint).tolist() == [0, 1]


@pytest.mark.parametrize(
    ("stride", "dtype"),
    [(15, torch.uint8), (16, torch.int16), (181, torch.int16), (182, torch.int32)],
)
def test_cell_dtype_holds_a_full_cell(stride: int, dtype: torch.dtype) -> None:
    assert module.cell_dtype(stride) == dtype
    full = cell_counts(torch.ones(1, stride, stride, dtype=torch.bool), stride)
    assert full.dtype == dtype and full.item() == stride * stride


@pytest.mark.parametrize(
    ("frame", "size"),
    [
        ((96, 128), (300, 400)),
        ((128, 85), (1001, 666)),
        ((64, 64), (37, 53)),
        ((3, 128), (7, 2000)),
    ],
)
def test_window_masks_are_rows_of_the_full_size_masks(
    frame: tuple[int, int], size: tuple[int, int]
) -> None:
    """Upscales (computed from the frame rows the window reads) and a downscale."""
    generator = torch.Generator().manual_seed(sum(size))
    low = torch.randn(3, 1, 16, 16, generator=generator) * 4
    logits = F.interpolate(low, frame, mode="bilinear", align_corners=False)[:, 0]
    full = F.interpolate(logits[:, None], size, mode="bilinear", align_corners=False)[:, 0] > 0
    for start, stop in [
        (0, size[0]),
        (0, 1),
        (size[0] // 3, size[0] // 3 + 5),
        (size[0] - 2, size[0]),
    ]:
        window = window_masks(logits, size, 0.0, slice(start, stop))
        assert window.shape == (3, stop - start, size[1])
        assert torch.equal(window, full[:, start:stop])


def test_off_the_cpu_the_whole_image_is_one_band_of_any_height() -> None:
    """Shapes only, on the meta device (no GPU here): 427 rows are not a multiple of 4."""
    measured = mask_statistics(torch.zeros(3, 683, 1024, device="meta"), (427, 640), 0.0, 1.0, 4)
    assert measured.stability.shape == measured.area.shape == (3,)
    assert measured.cells.shape == (3, 107, 160)


def test_mask_boxes_are_tight_and_xyxy_boxes_refuse_an_empty_mask() -> None:
    from ovsam.clip.region_classifier import mask_boxes_xyxy
    from ovsam.errors import InputError

    masks = np.zeros((3, 10, 12), bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 0, 11] = True
    masks[2, 9, 0] = masks[2, 4, 5] = True
    assert mask_boxes(torch.from_numpy(masks)).tolist() == [
        [2, 3, 5, 7],
        [0, 11, 1, 12],
        [4, 0, 10, 6],
    ]
    assert mask_boxes_xyxy(masks).tolist() == [[3, 2, 7, 5], [11, 0, 12, 1], [0, 4, 6, 10]]
    masks[1] = False
    assert mask_boxes(torch.from_numpy(masks))[1].tolist() == [0, 0, 0, 0]
    with pytest.raises(InputError, match="mask 1 is empty: nothing to recognise"):
        mask_boxes_xyxy(masks)
