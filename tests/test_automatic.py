"""Segment-everything: grid prompting, filtering and NMS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.automatic import AutomaticMaskGenerator, nms_stride, point_grid
from ovsam.cli.main import main
from ovsam.cropped_logits import CroppedLogits
from ovsam.errors import InputError
from ovsam.mask_nms import mask_nms
from ovsam.mask_statistics import cell_counts, stability_scores
from ovsam.masks import decode_rle, mask_iou
from ovsam.predictor import SamPredictor
from ovsam.transforms import preprocess_shape
from synthetic_scenes import make_scene


def test_point_grid_is_cell_centred() -> None:
    grid = point_grid(2)
    assert grid.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]


def test_stability_score_known_values() -> None:
    logits = torch.tensor([[[-2.0, -0.5, 0.5, 2.0]], [[-3.0, -3.0, -3.0, -3.0]]])
    # mask 0: >1 has 1 pixel, >-1 has 3 pixels -> 1/3; mask 1 empty at both levels -> 0
    assert stability_scores(logits, 0.0, 1.0).tolist() == pytest.approx([1 / 3, 0.0])


def test_mask_nms_keeps_best_of_duplicates_despite_stray_pixels() -> None:
    masks = torch.zeros(3, 40, 40, dtype=torch.bool)
    masks[0, 8:20, 8:20] = True
    masks[1, 8:20, 8:20] = True
    masks[1, 36, 0] = True  # a stray pixel makes the boxes differ, not the masks
    masks[2, 24:36, 24:36] = True
    scores = torch.tensor([0.8, 0.9, 0.5])
    assert mask_nms(masks, scores, 0.7).tolist() == [1, 2]


@pytest.mark.parametrize("copies", [3, 17, 200])
def test_mask_nms_keeps_the_first_of_equally_scored_duplicates(copies: int) -> None:
    """torchvision's rule: which copy survives (and so whose click and stability score the
    record shows) does not depend on how many candidates there are."""
    masks = torch.zeros(copies, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    assert mask_nms(masks, torch.full((copies,), 0.5), 0.7).tolist() == [0]


def _matrix_nms(masks: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy NMS over the full ``KxK`` IoU matrix: the reference (memory grows as K^2)."""
    order = torch.argsort(scores, descending=True, stable=True)
    flat = masks[order].flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    ious = inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)
    suppressed, keep = torch.zeros(len(order), dtype=torch.bool), []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(int(order[i]))
            suppressed |= ious[i] > threshold
    return keep


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("chunk", [None, 50])
def test_mask_nms_equals_greedy_nms_on_the_full_iou_matrix(
    threshold: float, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rectangles and blobs of every size, with duplicates, nested and empty masks (and
    candidates compared a few at a time)."""
    if chunk is not None:
        monkeypatch.setattr("ovsam.mask_nms.CHUNK_CELLS", chunk)
    gen = torch.Generator().manual_seed(int(threshold * 10))
    masks = torch.zeros(300, 48, 64, dtype=torch.bool)
    for k in range(280):
        y0, x0 = (
            torch.randint(0, 40, (1,), generator=gen),
            torch.randint(0, 56, (1,), generator=gen),
        )
        h, w = torch.randint(1, 30, (2,), generator=gen)
        masks[k, y0 : y0 + h, x0 : x0 + w] = True
        masks[k] &= torch.rand(48, 64, generator=gen) > 0.1 * (k % 3)  # holes
    masks[280:290] = masks[:10]  # exact duplicates; 290..299 stay empty
    scores = torch.rand(300, generator=gen)
    assert mask_nms(masks, scores, threshold).tolist() == _matrix_nms(masks, scores, threshold)


def _random_masks(count: int, seed: int) -> torch.Tensor:
    """``countx48x64`` masks: rectangles of every size, some with holes, a few 1-pixel dots
    a pixel or two apart, duplicates and empty masks."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, 48, 64, dtype=torch.bool)
    for k in range(count - 20):
        y0, x0 = (int(torch.randint(0, n, (1,), generator=gen)) for n in (40, 56))
        h, w = (int(v) for v in torch.randint(1, 30 if k % 4 else 4, (2,), generator=gen))
        masks[k, y0 : y0 + h, x0 : x0 + w] = True
        masks[k] &= torch.rand(48, 64, generator=gen) > 0.1 * (k % 3)  # holes
    masks[count - 20 : count - 10] = masks[:10]  # exact duplicates; the last 10 stay empty
    return masks


@pytest.mark.parametrize("cell", [2, 4, 16])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 0.9])
def test_mask_nms_on_cell_counts_decides_on_pixel_iou(cell: int, threshold: float) -> None:
    """Bounds from pixel counts per cell, exact counts where they straddle the threshold:
    the greedy NMS of the full-size masks, asking about few pairs."""
    masks = _random_masks(300, seed=cell + int(threshold * 10))
    scores = torch.rand(300, generator=torch.Generator().manual_seed(cell))
    asked: list[int] = []

    def intersections(i: int, rows: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        y0, x0, y1, x1 = (v * cell for v in box)
        assert not masks[i].any() or masks[i, y0:y1, x0:x1].sum() == masks[i].sum()
        asked.append(len(rows))
        return (masks[rows] & masks[i]).flatten(1).sum(1)

    kept = mask_nms(cell_counts(masks, cell), scores, threshold, cell, intersections)
    assert kept.tolist() == _matrix_nms(masks, scores, threshold)
    assert sum(asked) < 300 * len(kept) / 10


def test_mask_nms_keeps_distinct_dots_in_one_cell_without_counting_pixels() -> None:
    """2 and 4 pixels of one 4x4 cell share at most 2: IoU <= 0.5, both stay."""
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True
    masks[1, 0:2, 3] = True
    cells = cell_counts(masks, 4)
    assert mask_nms(cells, torch.tensor([0.9, 0.8]), 0.5, 4).tolist() == [0, 1]
    with pytest.raises(ValueError, match="4x4 cells need pixel_intersections"):
        mask_nms(cells, torch.tensor([0.9, 0.8]), 0.3, 4)  # IoU 0 to 0.5: undecided


@pytest.mark.parametrize(("extra", "kept"), [(1, [0]), (0, [0, 1])])
def test_mask_nms_decides_100_megapixel_masks_to_the_pixel(extra: int, kept: list[int]) -> None:
    """Mask 1 is 70,000,000 (+ extra) pixels of mask 0's 100,000,000: IoU just over, or
    exactly, 0.7. float32 holds neither count exactly and would keep both."""
    cells = torch.zeros(2, 100, 100, dtype=torch.int16)
    cells[0] = 100 * 100
    cells[1].view(-1)[:7000] = 100 * 100
    cells[1].view(-1)[7000] = extra

    def intersections(i: int, rows: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        return torch.minimum(cells[rows], cells[i]).flatten(1).sum(1)  # mask 1 is inside 0

    scores = torch.tensor([0.9, 0.5])
    assert mask_nms(cells, scores, 0.7, 100, intersections).tolist() == kept


def test_everything_finds_each_shape_once(mobilesam_model: torch.nn.Module) -> None:
    image, shapes = make_scene(0)
    generator = AutomaticMaskGenerator(SamPredictor(mobilesam_model), points_per_side=8)
    records = generator.generate(image)
    assert records == sorted(records, key=lambda r: -r["area"])
    for shape in shapes:
        matches = [mask_iou(r["segmentation"], shape.mask) for r in records]
        assert max(matches) >= 0.95, shape.name
        assert sum(m > 0.9 for m in matches) == 1, f"{shape.name} found more than once"
    for record in records:
        assert np.array_equal(decode_rle(record["rle"]), record["segmentation"])
        assert record["predicted_iou"] > 0.88 and record["stability_score"] >= 0.95
        ((x, y),) = record["point_coords"]  # SAM's [[x, y]]
        assert 0 <= x <= 480 and 0 <= y <= 360


def test_everything_keeps_distinct_dots_that_share_a_cell(
    mobilesam_model: torch.nn.Module,
) -> None:
    """Two dots a pixel apart, in one 4x4 cell of duplicate removal: pixel IoU 0, both kept
    (IoU on cells, 1.0, dropped the 2x2 one)."""
    image = np.full((16, 16, 3), 128, np.uint8)
    image[4:6, 4:6] = 0
    image[4:6, 7] = (255, 255, 0)
    generator = AutomaticMaskGenerator(SamPredictor(mobilesam_model), points_per_side=8)
    records = generator.generate(image)
    dots = {(tuple(r["bbox"]), r["area"]) for r in records if r["area"] < 10}
    assert dots == {((4, 4, 2, 2), 4), ((7, 4, 1, 2), 2)}


def test_everything_cli_on_a_folder_resumes_and_reports_bad_files(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:

    folder = tmp_path / "images"
    folder.mkdir()
    image, shapes = make_scene(1, 120, 160)
    Image.fromarray(image).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    argv = ["everything", str(folder), "--out", str(tmp_path / "out"), "--points-per-side", "4"]
    argv += ["--checkpoint", str(mobilesam_checkpoint)]
    assert main(argv) == 1  # one unreadable image
    err = capsys.readouterr().err  # each failure named on a line of its own, then a count
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "b.jpg is not a readable image" in failed[0]
    assert err.endswith(" of 2 could not be read or segmented (listed above); exit status 1\n")
    record = json.loads((tmp_path / "out" / "a.png" / "masks.json").read_text())
    assert record["image_size"] == {"height": 120, "width": 160} and record["masks"]
    stamp = (tmp_path / "out" / "a.png" / "masks.json").stat().st_mtime_ns
    main(argv)  # a second run skips the finished image
    assert (tmp_path / "out" / "a.png" / "masks.json").stat().st_mtime_ns == stamp
    (tmp_path / "out" / "a.png" / "overlay.png").unlink()  # lost (or removed): not finished
    main(argv)
    assert (tmp_path / "out" / "a.png" / "overlay.png").is_file()
    assert (tmp_path / "out" / "a.png" / "masks.json").stat().st_mtime_ns != stamp


def test_everything_on_a_large_photo_holds_few_full_size_masks(
    mobilesam_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, shapes = make_scene(2)
    big = image.repeat(5, axis=0).repeat(5, axis=1)  # 1800x2400, 4.3 MP
    assert (nms_stride(big.shape[:2]), nms_stride(image.shape[:2])) == (10, 4)
    predictor = SamPredictor(mobilesam_model)
    generator = AutomaticMaskGenerator(predictor, points_per_side=5)
    reference = generator.generate(big)
    monkeypatch.setattr("ovsam.predictor.UPSCALE_BUDGET", 3 * (1024**2 + big[..., 0].size))
    sizes, full = [], []
    frame = predictor.frame_logits
    monkeypatch.setattr(predictor, "frame_logits", lambda x: sizes.append(len(x)) or frame(x))
    upscale = predictor.upscale_masks
    monkeypatch.setattr(predictor, "upscale_masks", lambda x: full.append(len(x)) or upscale(x))
    records = generator.generate()
    assert max(sizes) == 3 and sum(sizes) > 3 * len(records)  # candidates: 3 at a time
    assert max(full) <= 3 and sum(full) == len(records)  # full-size logits: the records' only
    assert [r["rle"] for r in records] == [r["rle"] for r in reference]
    assert [r["predicted_iou"] for r in records] == [r["predicted_iou"] for r in reference]
    for shape in shapes:
        truth = shape.mask.repeat(5, axis=0).repeat(5, axis=1)
        assert max(mask_iou(r["segmentation"], truth) for r in records) >= 0.95, shape.name


def test_masks_smaller_than_a_cell_are_deduplicated_and_min_area_is_inclusive(
    mobilesam_model: torch.nn.Module,
) -> None:
    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    tiny[2:6, 2:6] = 255
    generator = AutomaticMaskGenerator(SamPredictor(mobilesam_model), points_per_side=8)
    records = generator.generate(tiny)
    masks = [r["segmentation"].tobytes() for r in records]
    assert records and len(set(masks)) == len(masks)  # no copies of a 2-pixel mask
    smallest = min(r["area"] for r in records)
    generator.min_mask_area = smallest  # "drops masks smaller than that": keeps this one
    assert min(r["area"] for r in generator.generate()) == smallest
    generator.min_mask_area = smallest + 1
    assert min(r["area"] for r in generator.generate()) > smallest


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"points_per_side": 2.5}, "points_per_side=2.5: expected an integer >= 1"),
        ({"points_per_side": True}, "points_per_side=True: expected an integer >= 1"),
        ({"points_per_batch": 0}, "points_per_batch=0: expected an integer >= 1"),
        ({"points_per_side": 257}, "points_per_side=257: expected at most 256"),
        ({"nms_thresh": 2.0}, r"nms_thresh=2.0: expected a finite number in \[0.0, 1.0\]"),
        ({"nms_thresh": True}, r"nms_thresh=True: expected a finite number in \[0.0, 1.0\]"),
        (
            {"pred_iou_thresh": float("nan")},
            r"pred_iou_thresh=nan: expected a finite number <= 2\.0$",
        ),
        ({"pred_iou_thresh": 88}, r"pred_iou_thresh=88: expected a finite number <= 2\.0$"),
        ({"stability_score_offset": -5.0}, "stability_score_offset=-5.0: .* >= 0.0"),
        ({"min_mask_area": -1}, "min_mask_area=-1: expected an integer >= 0"),
        ({"min_mask_area": 2.5}, "min_mask_area=2.5: expected an integer >= 0"),  # pixel count
        ({"min_mask_region_area": 1.5}, "min_mask_region_area=1.5: expected an integer >= 0"),
    ],
)
def test_meaningless_settings_are_refused(
    setting: dict, message: str, mobilesam_model: torch.nn.Module
) -> None:
    generator = AutomaticMaskGenerator(SamPredictor(mobilesam_model), **setting)
    with pytest.raises(InputError, match=message):
        generator.generate()  # refused before the predictor is asked for its (missing) image


def test_numpy_numbers_are_settings_like_python_ones(mobilesam_model: torch.nn.Module) -> None:
    image, _ = make_scene(2, 60, 80)
    predictor = SamPredictor(mobilesam_model)
    plain = AutomaticMaskGenerator(predictor, points_per_side=3, min_mask_area=4).generate(image)
    numpy_settings = AutomaticMaskGenerator(
        predictor,
        points_per_side=np.int64(3),
        points_per_batch=np.int32(64),
        min_mask_area=np.uint8(4),
        nms_thresh=np.float32(0.7),
        stability_score_thresh=np.float64(0.95),
    ).generate()
    assert plain and [r["rle"] for r in numpy_settings] == [r["rle"] for r in plain]
    # small numpy integers wrapped in the grid's and the batches' arithmetic (np.uint8(130)
    # put the grid in [0.25, 0.75], np.uint8(200) decoded 200 of 256 clicks)
    np.testing.assert_array_equal(point_grid(np.uint8(130)), point_grid(130))
    batches: list[int] = []
    generator = AutomaticMaskGenerator(
        predictor, points_per_side=np.uint8(16), points_per_batch=np.uint8(200)
    )
    candidates = generator._candidates
    generator._candidates = lambda points, *rest: (
        batches.append(len(points)) or candidates(points, *rest)
    )
    generator.generate()
    assert batches == [200, 56]


def test_settings_above_every_score_or_area_keep_nothing(mobilesam_model: torch.nn.Module) -> None:
    """MobileSAM predicts IoUs up to about 1.01, so 1.0 did not mean "none" and above it was
    refused; a min area beyond int64 raised OverflowError from inside torch."""
    predictor = SamPredictor(mobilesam_model)
    predictor.set_image(make_scene(2, 60, 80)[0])
    for setting in ({"pred_iou_thresh": 1.5}, {"min_mask_area": 10**30}):
        generator = AutomaticMaskGenerator(predictor, points_per_side=3, **setting)
        assert generator.generate() == []


def _blobs_and_spikes(gen: torch.Generator) -> torch.Tensor:
    """``20x256x256`` low-res logits: blobs from large to tiny with ragged edges, then three
    strong pixels close together on a background just below 0 (a cut margin shows there),
    then an empty map."""
    yx = torch.stack(torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij"))
    centres = torch.rand(10, 2, 1, 1, generator=gen) * 256
    radii = torch.linspace(120, 2, 10)[:, None, None]
    blobs = 10 * (1 - ((yx - centres) ** 2).sum(1) / radii**2)
    blobs += 2 * torch.randn(10, 256, 256, generator=gen)
    spikes = -1e-3 * torch.rand(10, 256, 256, generator=gen)
    where = torch.randint(0, 236, (9, 1, 2), generator=gen) + torch.randint(
        0, 20, (9, 3, 2), generator=gen
    )
    for k, points in enumerate(where):
        spikes[k, points[:, 0], points[:, 1]] = 50 * torch.rand(3, generator=gen)
    return torch.cat([blobs, spikes])  # the last spike map stays empty


@pytest.mark.parametrize("size", [(30, 40), (1000, 90), (1500, 2600), (7, 3000), (513, 1025)])
def test_cropped_logits_give_the_masks_of_the_full_ones(
    mobilesam_model: torch.nn.Module, size: tuple[int, int]
) -> None:
    """Candidates are kept as low-res logits cut to their masks plus a margin: upscaled and
    thresholded they must give exactly the masks of the full maps, at any image size (with a
    margin of 1 the spikes' masks differ at some of these sizes)."""
    input_size = preprocess_shape(*size, 1024)

    def masks(low_res: torch.Tensor) -> torch.Tensor:  # as SamPredictor.binary_masks
        return mobilesam_model.postprocess_masks(low_res[:, None], input_size, size) > 0.0

    logits = _blobs_and_spikes(torch.Generator().manual_seed(size[0]))
    cropped = CroppedLogits.crop(logits, 0.0)
    assert cropped.crops[-1].numel() == 0
    assert sum(crop.numel() for crop in cropped.crops) < 0.25 * logits.numel()  # the point
    full = cropped.full(list(range(20)))
    assert torch.equal(masks(full), masks(logits))
    assert torch.equal(CroppedLogits.cat([cropped, cropped]).full([23, 2]), full[[3, 2]])


def test_a_decoder_without_an_iou_head_has_its_score_named_and_filtered(
    mobilesam_model: torch.nn.Module,
) -> None:
    """OV-SAM's CLIP2SAM head (here with MobileSAM's decoder weights, so that its masks are
    real) scores a mask by the stability of its low-res logits. The records called that score
    ``predicted_iou``; now ``predicted_iou`` is None and ``low_res_stability_score`` holds it,
    which ``pred_iou_thresh`` filters."""
    import copy

    from ovsam.ov.clip2sam import CLIP2SAMHead

    model = copy.deepcopy(mobilesam_model)
    torch.manual_seed(0)  # the random label token steers the masks: 5 to 16 records by seed
    head = CLIP2SAMHead(256, 1024, 7)
    state = model.mask_decoder.state_dict()
    dropped = ("mask_tokens", "output_hypernetworks_mlps", "iou")  # 4 tokens and the IoU head
    single = {k: v for k, v in state.items() if not k.startswith(dropped)}
    single |= {k: v for k, v in state.items() if k.startswith("output_hypernetworks_mlps.0.")}
    single["mask_tokens.weight"] = state["mask_tokens.weight"][:1]
    head.mask_decoder.load_state_dict(single)
    model.mask_decoder = head.eval()
    predictor = SamPredictor(model)
    image, _ = make_scene(0)
    kept_all = {"pred_iou_thresh": -1.0, "stability_score_thresh": 0.0}
    records = AutomaticMaskGenerator(predictor, points_per_side=4, **kept_all).generate(image)
    assert len(records) >= 3
    for record in records:
        assert record["predicted_iou"] is None
        clicks = predictor.transform.apply_coords(np.array(record["point_coords"]), (360, 480))
        low_res, _ = predictor.decode_low_res(
            torch.as_tensor(clicks, dtype=torch.float32)[None], torch.ones(1, 1, dtype=torch.int64)
        )
        stability = float(stability_scores(low_res[:, 0], 0.0, 1.0)[0])
        # decoded alone, not in the grid's batch: float rounding flips a few low-res pixels
        assert record["low_res_stability_score"] == pytest.approx(stability, abs=2e-3)
    scores = sorted(r["low_res_stability_score"] for r in records)
    threshold = scores[len(scores) // 2]
    strict = AutomaticMaskGenerator(
        predictor, points_per_side=4, pred_iou_thresh=threshold, stability_score_thresh=0.0
    ).generate(image)
    assert strict and all(r["low_res_stability_score"] > threshold for r in strict)
