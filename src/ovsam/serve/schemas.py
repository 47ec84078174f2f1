"""Request and response bodies of the HTTP API (pydantic models, shown in the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from ovsam.generator_settings import PRED_IOU_THRESH_MAX

MAX_POINTS = 1024
"""Schema bound on points and labels of one prompt (``ServeSettings.max_points`` is lower)."""
MAX_NAMES = 100_000
"""Schema bound on the names of a posted vocabulary (``ServeSettings.max_vocabulary`` is lower)."""
MAX_POINTS_PER_SIDE = 64
"""Largest "segment everything" grid a request may ask for (4,096 clicks, holding the model)."""
COORDINATE_SHAPES = {"points": "2 values (X, Y)", "box": "4 values (X0, Y0, X1, Y1)"}
"""What one point / the box of a prompt must hold (named in the error of a wrong shape)."""
VOCABULARY_NAME = r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
"""Letters, digits, ``_ . -`` and not only dots (``.`` and ``..`` would be path segments)."""


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ImageInfo(BaseModel):
    image_id: str
    name: str
    width: int
    height: int
    embedding_ms: float | None = None
    picture: str | None = Field(
        None,
        description="URL of the upright picture to show when the upload's orientation "
        "metadata (EXIF, XMP) turned it, as browsers do not all apply it; null: the file "
        "shows as it is",
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # "point_coords" or "topk" must not be ignored

    # Strict: JSON numbers only (an integer is a float), not true or "80" coerced into pixels.
    points: list[tuple[StrictFloat, StrictFloat]] = Field(
        default_factory=list, max_length=MAX_POINTS, description="XY pixels"
    )
    labels: list[StrictInt] = Field(
        default_factory=list, max_length=MAX_POINTS, description="1 = object, 0 = background"
    )
    box: tuple[StrictFloat, StrictFloat, StrictFloat, StrictFloat] | None = Field(
        None, description="XYXY pixels"
    )
    mask_id: str | None = Field(None, description="refine the mask returned under this id")
    vocabulary: str | None = Field(
        None, min_length=1, description="vocabulary name for labels (leave it out for none)"
    )
    top_k: StrictInt = Field(5, ge=1, le=50)
    format: Literal["png", "rle"] = "png"


class Label(BaseModel):
    name: str = Field(description="the class's display name (its first synonym)")
    score: float


class Recognition(BaseModel):
    """Whether masks get labels, and from what."""

    available: bool = Field(description="masks are named when a vocabulary is given")
    message: str = Field(description="the recognizer and its weights, or how to get labels")
    random_weights: bool = Field(
        False,
        description="the recognizer runs on random weights (ovsam serve --random-recognition, "
        "for testing): labels are returned but meaningless",
    )


class PredictResponse(BaseModel):
    mask_id: str
    score: float
    score_name: Literal["predicted_iou", "low_res_stability_score"] = Field(
        "predicted_iou",
        description="what score is: SAM's predicted IoU, or the mask's stability for a decoder "
        "without an IoU head (Open-Vocabulary SAM): that of its low-res logits",
    )
    area: int
    bbox: list[int] = Field(description="XYWH pixels")
    width: int
    height: int
    mask_png: str | None = Field(None, description="base64 PNG, 0/255, image size")
    mask_rle: dict | None = Field(None, description="COCO compressed RLE")
    labels: list[Label] = Field(description="top-k; random when recognition.random_weights")
    recognition: Recognition
    elapsed_ms: float


class EverythingRequest(BaseModel):
    """Settings of "segment everything" (SAM's automatic mask generator; defaults of the CLI
    but a coarser grid: the model is held for the whole run)."""

    model_config = ConfigDict(extra="forbid")

    points_per_side: StrictInt = Field(16, ge=1, le=MAX_POINTS_PER_SIDE)
    pred_iou_thresh: StrictFloat = Field(
        0.88, le=PRED_IOU_THRESH_MAX, description="keep masks scored above this (see score_name)"
    )
    stability_score_thresh: StrictFloat = Field(0.95, ge=0, le=1)
    min_mask_area: StrictInt = Field(0, ge=0, description="drop masks of fewer pixels")
    min_mask_region_area: StrictInt = Field(
        0, ge=0, description="fill holes and remove islands of fewer pixels in each mask"
    )
    vocabulary: str | None = Field(None, min_length=1, description="name the masks from it")
    top_k: StrictInt = Field(3, ge=1, le=50)


class EverythingMask(BaseModel):
    rle: dict = Field(description="COCO compressed RLE, image size")
    area: int
    bbox: list[int] = Field(description="XYWH pixels")
    score: float
    stability_score: float
    point: list[float] = Field(description="the grid click (XY pixels) that found it")
    labels: list[Label] = Field(description="top-k; random when recognition.random_weights")


class EverythingResponse(BaseModel):
    masks: list[EverythingMask] = Field(description="largest first")
    score_name: Literal["predicted_iou", "low_res_stability_score"]
    width: int
    height: int
    recognition: Recognition
    elapsed_ms: float


class VocabularyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=VOCABULARY_NAME)
    names: list[str] = Field(
        max_length=MAX_NAMES,
        description="one class per entry; commas separate synonyms ('cup, mug'), the first "
        "is the label (as in the CLI); at most maxItems names, synonyms included",
    )


class VocabularyInfo(BaseModel):
    name: str
    size: int
    builtin: bool


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    weights: str
    recognition: Recognition
    cached_images: int
    cache_capacity: int
    cache_bytes: int


def with_server_limits(
    schema: dict[str, Any], max_points: int, max_vocabulary: int
) -> dict[str, Any]:
    """The app's OpenAPI ``schema`` with a server's own limits (``ServeSettings``) as
    ``maxItems``, where the models hold the largest any server allows (:data:`MAX_POINTS`,
    :data:`MAX_NAMES`): a request within the schema then passes those checks."""
    models = schema["components"]["schemas"]
    for field in ("points", "labels"):
        models["PredictRequest"]["properties"][field]["maxItems"] = max_points
    models["VocabularyIn"]["properties"]["names"]["maxItems"] = max_vocabulary
    return schema
