"""The FastAPI application: versioned JSON API under ``/v1`` and the web page at ``/``.

Uploads and prompts run on threads of their own, behind a bounded queue (a full one answers
503 ``busy``: :mod:`ovsam.serve.model_threads`), never on the event loop, nor in the thread pool
that serves the page and the other endpoints; the
:class:`~ovsam.serve.engine.SegmentationEngine` serialises access to the one model.
``/v1/health`` only reads counters: it runs on the loop.
Every error is JSON ``{"error": {"code", "message"}}`` with a 4xx status naming the problem
(:mod:`ovsam.serve.http_errors`); running out of memory is a 503 ``out_of_memory``, any other
unexpected failure a 500 ``internal_error``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.types import Scope

from ovsam.assets import SAMPLE_PHOTO
from ovsam.cpu_allocator import release_freed_memory
from ovsam.errors import InputError
from ovsam.image_io import ImageTooLargeError, load_image_and_orientation
from ovsam.recognizers import LabelOptions
from ovsam.serve.engine import NO_RECOGNITION, MissingRecognizer, Recognizer, SegmentationEngine
from ovsam.serve.everything import EverythingAnswers
from ovsam.serve.http_errors import ApiError, GuardMiddleware, install_error_handlers
from ovsam.serve.model_threads import ModelThreads
from ovsam.serve.prompts import PromptAnswers
from ovsam.serve.schemas import (
    ErrorResponse,
    EverythingRequest,
    EverythingResponse,
    Health,
    ImageInfo,
    PredictRequest,
    PredictResponse,
    Recognition,
    VocabularyIn,
    VocabularyInfo,
    with_server_limits,
)
from ovsam.serve.settings import ServeSettings
from ovsam.serve.store import ImageStore, StoredImage
from ovsam.serve.vocabularies import Vocabularies

STATIC_DIR = Path(__file__).resolve().parent / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 415, 422, 503)}
MULTIPART_OVERHEAD = 64 * 1024
"""Bytes allowed on top of ``max_upload_bytes`` for the multipart envelope of an upload."""
FALLBACK_MODEL = "mobilesam"
"""What segments when an Open-Vocabulary SAM model was asked for but its weights are missing."""
UNTYPED = ("", "application/octet-stream")
"""Declared content types that say nothing about the file (curl, ``requests``, browsers)."""
DECODES_AT_ONCE = 2
"""Uploads decoded and embedded at once: a decode of a ``max_pixels`` image peaks at about
26 bytes a pixel (an RGBA PNG; about 1 GB at the 40 Mpx default), and uploads run on up to
``MODEL_THREADS`` threads. A decoded image is held until the model (one image at a time) has
embedded it, so this also bounds the decoded images in memory: one embedding, one waiting;
the memory is then handed back (:func:`~ovsam.cpu_allocator.release_freed_memory`), or each
thread's heap would keep its own share."""


PICTURE_SIDE = 4096
"""Longest side of the upright picture the page shows (it draws at most a few thousand pixels,
and JPEG holds no side over 65,500); clicks map through the image's own size."""


def upright_jpeg(image: np.ndarray) -> bytes:
    """``image`` (``HxWx3`` uint8 RGB) as a JPEG for the page to show, its longest side at most
    :data:`PICTURE_SIDE`."""
    picture = Image.fromarray(image)
    picture.thumbnail((PICTURE_SIDE, PICTURE_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def picture_url(item: StoredImage) -> str | None:
    """Where the page gets ``item``'s upright picture (None: the uploaded file shows right)."""
    return None if item.picture is None else f"/v1/images/{item.image_id}/picture"


def may_be_raster_image(content_type: str) -> bool:
    """Whether an upload declared as ``content_type`` (lower case, no parameters) should be
    decoded: an untyped part or an ``image/*`` type other than SVG (a vector format)."""
    return content_type in UNTYPED or (
        content_type.startswith("image/") and not content_type.startswith("image/svg")
    )


def create_app(
    settings: ServeSettings, engine_factory: Callable[[ServeSettings], SegmentationEngine]
) -> FastAPI:
    """Build the app; ``engine_factory(settings)`` is called once, at start-up."""
    app = FastAPI(
        title="ovsam", version="1", description="Segment and name any object you point at."
    )
    schema = app.openapi  # generated once, then kept; this server's limits are written in
    limits = (settings.max_points, settings.max_vocabulary)
    app.openapi = lambda: with_server_limits(schema(), *limits)  # type: ignore[method-assign]
    engine = engine_factory(settings)
    store = ImageStore(settings.cache_images, settings.cache_bytes, settings.masks_per_image)
    vocabularies = Vocabularies(settings, engine.recognizer.check)
    app.state.engine, app.state.store, app.state.vocabularies = engine, store, vocabularies
    decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)
    model_threads = app.state.model_threads = ModelThreads()

    def too_many_points(kind: str) -> Callable[[int], ApiError]:
        return lambda n: ApiError(
            400, "too_many_points", f"too many {kind}: {n} > {settings.max_points}"
        )

    install_error_handlers(
        app,
        {"points": too_many_points("points"), "labels": too_many_points("labels"),
         "names": vocabularies.too_large},
    )  # fmt: skip

    def upload_too_large() -> ApiError:
        return ApiError(
            413, "upload_too_large",
            f"upload is larger than the limit of {settings.max_upload_bytes} bytes",
        )  # fmt: skip

    def body_limit(scope: Scope) -> tuple[int, ApiError]:
        if scope["method"] == "POST" and scope["path"] == "/v1/images":
            return settings.max_upload_bytes + MULTIPART_OVERHEAD, upload_too_large()
        return settings.max_body_bytes, ApiError(
            413, "body_too_large",
            f"request body is larger than the limit of {settings.max_body_bytes} bytes",
        )  # fmt: skip

    app.add_middleware(GuardMiddleware, limit_for=body_limit, timeout_s=settings.body_timeout_s)

    def recognition() -> Recognition:
        recognizer = engine.recognizer
        return Recognition(
            available=recognizer.available, message=recognizer.message,
            random_weights=recognizer.random_weights,
        )  # fmt: skip

    def stored(image_id: str) -> StoredImage:
        item = store.get(image_id)
        if item is None:
            raise ApiError(
                404, "unknown_image",
                f"unknown image id {image_id!r} (never uploaded, or evicted from the cache)",
            )  # fmt: skip
        return item

    def register(data: bytes, name: str) -> ImageInfo:
        with decoding:  # held until the embedding is done (see DECODES_AT_ONCE)
            try:
                image, orientation = load_image_and_orientation(
                    data, max_pixels=settings.max_pixels
                )
            except ImageTooLargeError as exc:
                raise ApiError(413, "too_many_pixels", str(exc)) from exc
            except InputError as exc:
                raise ApiError(400, "bad_image", str(exc)) from exc
            state, elapsed = engine.embed(image)
            picture = None if orientation == 1 else upright_jpeg(image)
            del image
            release_freed_memory()  # or each model thread's heap keeps its decodes' memory
        item = store.add(name, state, picture)
        return ImageInfo(image_id=item.image_id, name=name, width=item.width, height=item.height,
                         embedding_ms=round(elapsed, 1), picture=picture_url(item))  # fmt: skip

    @app.get("/v1/health", response_model=Health)
    async def health() -> Health:
        """Model, recognition and cache status (``HEAD`` answers the status alone); on the
        event loop, as a check queued behind uploads in the thread pool timed out."""
        return Health(
            status="ok", model=engine.model_name, weights=engine.weights,
            recognition=recognition(), cached_images=len(store),
            cache_capacity=settings.cache_images, cache_bytes=store.total_bytes(),
        )  # fmt: skip

    app.add_api_route("/v1/health", health, methods=["HEAD"], include_in_schema=False)

    def read_and_register(file: UploadFile) -> ImageInfo:
        data = file.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise upload_too_large()
        return register(data, file.filename or "upload")

    @app.post("/v1/images", response_model=ImageInfo, status_code=201, responses=ERRORS)
    async def upload_image(file: UploadFile, request: Request) -> ImageInfo:
        """Upload an image (multipart field ``file``); it is embedded once and cached.

        The file's bytes decide whether it is an image: a part declared as a raster image
        type, as ``application/octet-stream`` or without a type is decoded (unreadable data is
        a 400 ``bad_image``); any other declared type is a 415."""
        content_type = (file.content_type or "").split(";")[0].strip().lower()
        if not may_be_raster_image(content_type):
            raise ApiError(
                415, "unsupported_media_type",
                f"content type {content_type!r} is not accepted: send a raster image "
                "(PNG, JPEG, WebP, BMP, TIFF or GIF)",
            )  # fmt: skip
        return await model_threads.run(read_and_register, file, gone=request.is_disconnected)

    @app.post("/v1/images/sample", response_model=ImageInfo, status_code=201, responses=ERRORS)
    async def upload_sample() -> ImageInfo:
        """Embed the sample photo shipped with ovsam (a coffee cup)."""
        return await model_threads.run(
            lambda: register(SAMPLE_PHOTO.read_bytes(), SAMPLE_PHOTO.name)
        )

    @app.get("/v1/images/{image_id}", response_model=ImageInfo, responses=ERRORS)
    def image_info(image_id: str) -> ImageInfo:
        item = stored(image_id)
        return ImageInfo(
            image_id=item.image_id, name=item.name, width=item.width, height=item.height,
            picture=picture_url(item),
        )  # fmt: skip

    @app.get(
        "/v1/images/{image_id}/picture",
        response_class=Response,
        responses={**ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "JPEG"}},
    )
    def image_picture(image_id: str) -> Response:
        """The upright picture of an upload its orientation metadata turned (JPEG)."""
        item = stored(image_id)
        if item.picture is None:
            raise ApiError(
                404, "no_picture",
                f"image {image_id!r} was not turned: show the uploaded file as it is",
            )  # fmt: skip
        return Response(item.picture, media_type="image/jpeg")

    @app.delete("/v1/images/{image_id}", status_code=204, responses=ERRORS)
    def delete_image(image_id: str) -> None:
        if not store.delete(image_id):
            raise ApiError(404, "unknown_image", f"unknown image id {image_id!r}")

    prompts = PromptAnswers(
        engine, store, vocabularies, settings, model_threads, stored, recognition,
        too_many_points("points"),
    )  # fmt: skip

    @app.post("/v1/images/{image_id}/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(image_id: str, body: PredictRequest, request: Request) -> PredictResponse:
        """Segment the object at points (+/-) and/or a box; optionally refine a previous mask."""
        return await prompts.predict(image_id, body, request.is_disconnected)

    everything = EverythingAnswers(
        engine, vocabularies, model_threads, prompts.prepared, stored, recognition
    )

    @app.post(
        "/v1/images/{image_id}/everything", response_model=EverythingResponse, responses=ERRORS
    )
    async def segment_everything(
        image_id: str, body: EverythingRequest, request: Request
    ) -> EverythingResponse:
        """Segment every object (a grid of clicks, SAM's automatic mask generator); optionally
        name each mask from a vocabulary. Others' requests go between batches of the grid."""
        return await everything.answer(image_id, body, request.is_disconnected)

    @app.get("/v1/vocabularies", response_model=list[VocabularyInfo])
    def list_vocabularies() -> list[VocabularyInfo]:
        return vocabularies.list()

    @app.post("/v1/vocabularies", response_model=VocabularyInfo, status_code=201, responses=ERRORS)
    def add_vocabulary(body: VocabularyIn) -> VocabularyInfo:
        """Add (or replace) a custom vocabulary of class names typed by the user."""
        vocabulary = vocabularies.add(body.name, body.names)
        return VocabularyInfo(name=body.name, size=len(vocabulary), builtin=False)

    @app.delete("/v1/vocabularies/{name}", status_code=204, responses=ERRORS)
    def delete_vocabulary(name: str) -> None:
        """Forget a custom vocabulary (built-in ones cannot be deleted)."""
        vocabularies.delete(name)

    @app.get("/v1/sample.jpg", include_in_schema=False)
    def sample_photo() -> FileResponse:
        return FileResponse(SAMPLE_PHOTO, media_type="image/jpeg")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def default_engine(settings: ServeSettings) -> SegmentationEngine:
    """The real engine, on ``settings.device``: ``settings.model`` with its weights and
    :func:`default_recognizer`. With the ``ovsam`` recognizer and labels asked for, an
    Open-Vocabulary SAM segments and names (:func:`ovsam_engine`); when its weights are
    missing, ``settings.model`` segments (MobileSAM if it or ``settings.checkpoint`` is an
    OV-SAM model) and the recognizer's message says what is missing and how to get it."""
    from ovsam.build import build_model
    from ovsam.errors import first_line
    from ovsam.predictor import SamPredictor
    from ovsam.recognizers import RecognitionWeightsMissing, is_ovsam_model

    if settings.recognizer == "ovsam" and (settings.labels or settings.random_recognition):
        try:
            return ovsam_engine(settings)
        except RecognitionWeightsMissing as exc:
            recognizer: Recognizer = MissingRecognizer(first_line(exc))
    else:
        recognizer = default_recognizer(settings)
    name, checkpoint = settings.model, settings.checkpoint
    if settings.recognizer == "ovsam" and any(
        is_ovsam_model(str(path)) for path in (name, checkpoint) if path is not None
    ):  # an OV-SAM model without its recognition weights: the default model segments
        name, checkpoint = FALLBACK_MODEL, None
    model = build_model(name, checkpoint=checkpoint).to(settings.device)
    return SegmentationEngine(SamPredictor(model), name, recognizer, checkpoint or "default")


def ovsam_engine(settings: ServeSettings) -> SegmentationEngine:
    """Open-Vocabulary SAM (``settings.model`` if it is one, else ``ovsam_coco``) segments and
    names masks; class names are embedded by its CLIP. Raises
    :class:`~ovsam.recognizers.RecognitionWeightsMissing` when its weights cannot be obtained
    (and an :class:`~ovsam.errors.InputError` for a ``clip_model`` it was not trained with)."""
    from ovsam.recognizers import build_labeled_predictor, segmentation_model_name
    from ovsam.serve.recognition import OVSamRecognizer

    options = serve_label_options(settings)
    predictor = build_labeled_predictor(
        options, settings.model, settings.checkpoint, settings.device, set_vocabulary=False
    )
    name = segmentation_model_name(options, settings.model)
    note = options.describe_weights()  # the random-weights note, or the CLIP's weights
    if not options.random_weights:
        note = f"{name} with {note}"
    recognizer = OVSamRecognizer(predictor, note, random_weights=options.random_weights)
    weights = "random" if options.random_masks else settings.checkpoint or "default"
    return SegmentationEngine(predictor, name, recognizer, weights)


def serve_label_options(settings: ServeSettings) -> LabelOptions:
    """The :class:`~ovsam.recognizers.LabelOptions` of the server's recognizer (vocabularies
    and top-k come with each request)."""
    from ovsam.recognizers import checkpoint_given

    return LabelOptions(
        recognizer=settings.recognizer,
        clip_model=settings.clip_model,
        clip_weights=settings.clip_weights,
        random_weights=settings.random_recognition,
        checkpoint_given=checkpoint_given(settings.model, settings.checkpoint),
    )


def default_recognizer(settings: ServeSettings) -> Recognizer:
    """CLIP Image-Crop labels when asked for (``settings.labels``) and the weights load;
    otherwise a :class:`MissingRecognizer` whose message says exactly what to do (the
    ``ovsam`` recognizer is built by :func:`default_engine`, as its model also segments)."""
    from ovsam.clip.factory import create_model
    from ovsam.clip.pretrained import pretrained_weights_name
    from ovsam.errors import InputError, WeightsUnavailableError
    from ovsam.serve.recognition import ClipRecognizer

    try:  # what 'ovsam download' calls these weights (none for a file of one's own)
        weights = pretrained_weights_name(settings.clip_model, settings.clip_weights)
    except InputError:
        weights = None
    if settings.random_recognition:
        torch.manual_seed(0)
        clip = create_model(settings.clip_model, device=settings.device)
        return ClipRecognizer(
            clip, f"random CLIP {settings.clip_model} weights: labels are meaningless",
            random_weights=True,
        )  # fmt: skip
    if not settings.labels and settings.recognizer == "ovsam":
        return MissingRecognizer(
            f"{NO_RECOGNITION}; start with 'ovsam serve --recognizer ovsam' to load "
            "Open-Vocabulary SAM"
        )
    if not settings.labels:
        return MissingRecognizer(
            "labels are off: masks come without class labels; start with 'ovsam serve "
            f"--labels' to load CLIP {settings.clip_model}"
            + (f" ({weights}, downloaded on first use)" if weights else "")
        )
    try:
        clip = create_model(
            settings.clip_model, pretrained=settings.clip_weights, device=settings.device
        )
    except WeightsUnavailableError as exc:
        reason = f"{NO_RECOGNITION}: {exc}".splitlines()[0]
        if weights and "ovsam download" not in reason:  # not when it says how already
            reason += f" (get it with 'ovsam download {weights}')"
        return MissingRecognizer(reason)
    return ClipRecognizer(clip, f"CLIP {settings.clip_model} ({settings.clip_weights})")
