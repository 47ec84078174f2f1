"""One prompted segmentation from a file to an output folder (used by the CLI and demo)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ovsam.boxes import clip_boxes_to_image, finite_array
from ovsam.build import build_model
from ovsam.image_io import load_image
from ovsam.outputs import Prompt, write_result
from ovsam.predictor import SamPredictor
from ovsam.prompt_arrays import check_points
from ovsam.recognizers import LabelOptions, build_labeled_predictor, recognition_record
from ovsam.run_settings import checkpoint_record, model_record

# how each mask score is named (result.json key -> terminal): SAM's IoU head, or the stability
# score of decoders without one (:attr:`~ovsam.predictor.SamPredictor.score_name`)
SCORE_WORDS = {"predicted_iou": "predicted IoU", "low_res_stability_score": "stability score"}


def choose_multimask(num_points: int, has_box: bool) -> bool:
    """SAM's rule: ask for three candidates only for a lone point (ambiguous prompt)."""
    return num_points == 1 and not has_box


def segment_image(
    image_path: str | Path,
    *,
    out_dir: str | Path,
    box: Sequence[float] | None = None,
    points: Sequence[Sequence[float]] = (),
    negatives: Sequence[Sequence[float]] = (),
    model_name: str = "mobilesam",
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    label_options: LabelOptions | None = None,
) -> tuple[dict[str, Path], str]:
    """Segment the object marked by ``box`` (XYXY) and/or ``points`` / ``negatives`` (XY).

    For a box the single-mask output is used; for a lone point the best of the three
    candidates. Writes the outputs of :func:`ovsam.outputs.write_result`; returns their
    paths and a one-line summary. With ``label_options`` the mask is also named (top-k labels
    in the JSON, the best on the overlay; see :mod:`ovsam.recognizers`). A decoder without an
    IoU head (OV-SAM) scores masks by stability: the JSON then has ``"predicted_iou": null`` and
    ``"low_res_stability_score"`` (as ``ovsam everything`` names it), and the summary says
    "stability score". The JSON names the model
    that segmented and its ``checkpoint`` (a file as its absolute path and sha256:
    :mod:`ovsam.run_settings`).
    """
    image = load_image(image_path)
    all_points = [*points, *negatives]
    labels = [1] * len(points) + [0] * len(negatives)
    # the prompt is checked against the image before any model is built (a text bank can
    # take minutes); predict checks it again, in the model's terms
    size = image.shape[:2]
    point_coords = point_labels = box_array = None
    if all_points:
        point_coords, point_labels = check_points(all_points, labels, size)
    if box is not None:
        box_array = finite_array("box", box, "XYXY pixels")
        clip_boxes_to_image(box_array, *size, allow_empty=False)
    if label_options is None:
        predictor = SamPredictor(build_model(model_name, checkpoint=checkpoint).to(device))
    else:
        predictor = build_labeled_predictor(label_options, model_name, checkpoint, device)
    predictor.set_image(image)
    masks, scores, _, *recognized = predictor.predict(
        point_coords=point_coords,
        point_labels=point_labels,
        box=box_array,
        multimask_output=choose_multimask(len(all_points), box is not None),
    )
    best = int(np.argmax(scores))
    extra: dict[str, object] = {
        "model": model_record(label_options, model_name),
        "checkpoint": checkpoint_record(checkpoint, model_name),
        "image": str(image_path),
    }
    score_name = predictor.score_name
    if score_name != "predicted_iou":
        extra |= {"predicted_iou": None, score_name: float(scores[best])}
    caption = None
    if label_options is not None:
        named = recognized[0][best]
        caption = f"{named.label} {named.top[0][1]:.2f}{label_options.caption_note()}"
        extra |= {
            "label": named.label,
            "labels": [{"name": n, "score": round(p, 6)} for n, p in named.top],
            **recognition_record(label_options),
        }
    prompt = Prompt(
        points=[(float(x), float(y)) for x, y in all_points],
        point_labels=labels,
        box=None if box is None else tuple(float(v) for v in box),
    )
    paths = write_result(
        out_dir, image, masks[best], float(scores[best]), prompt, extra=extra, caption=caption
    )
    area = int(masks[best].sum())
    summary = (
        f"mask: {area} pixels ({100.0 * area / masks[best].size:.1f}% of the image), "
        f"{SCORE_WORDS[score_name]} {scores[best]:.3f}"
    )
    if caption is not None:
        tops = ", ".join(f"{n} {p:.2f}" for n, p in named.top)
        summary += f"\nlabel: {extra['label']} (top: {tops}) [{label_options.describe_weights()}]"
    return paths, summary
