"""Every error of the HTTP API as JSON ``{"error": {"code", "message"}}``.

Covers the API's own errors (:class:`ApiError`), Starlette's (unknown route, wrong method,
malformed multipart), request validation, oversized bodies (rejected from ``Content-Length``
before they are read, or as soon as a streamed body passes the limit) and unexpected
exceptions (500 ``internal_error``; the traceback goes to the server log, not the client),
except running out of CPU or GPU memory (503 ``out_of_memory``: the request may work later or
smaller).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ovsam.errors import InputError, NotReadyError, first_line, out_of_memory_line
from ovsam.serve.schemas import COORDINATE_SHAPES

LOG = logging.getLogger("ovsam.serve")
STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}
INTERNAL_MESSAGE = "internal server error (the details are in the server log)"


class ApiError(HTTPException):
    """An error answered with ``status`` and a JSON body ``{"error": {code, message}}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, message, headers)
        self.status, self.code, self.message = status, code, message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error envelope."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


TooLong = Callable[[int], ApiError]


def _shape_message(err: dict, loc: list[str]) -> str | None:
    """``"points.0: expected 2 values (X, Y)"`` for a point or box of the wrong shape (too
    many values, too few, or not a list), else None."""
    kind = err.get("type")
    if kind == "missing" and len(loc) > 1 and loc[-1].isdigit():
        where = loc[:-1]  # the value after the last one given is missing
    elif kind == "tuple_type" or (
        kind == "too_long" and err.get("ctx", {}).get("field_type") == "Tuple"
    ):
        where = loc
    else:
        return None
    shape = COORDINATE_SHAPES.get(loc[0]) if loc else None
    return f"{'.'.join(where)}: expected {shape}" if shape else None


NO_FILE_PART = (
    "file: no file part: send the image as multipart form data in a part named 'file' "
    "(curl -F 'file=@photo.jpg')"
)
TEXT_NOT_FILE = (
    "file: a text field, not a file: send the image's bytes as a file part "
    "(curl -F 'file=@photo.jpg', not 'file=<photo.jpg')"
)


def validation_error(exc: RequestValidationError, limits: dict[str, TooLong]) -> ApiError:
    """A readable :class:`ApiError` for a request that failed schema validation.

    ``limits`` maps a body field to the error (given the list's length) its ``too_long``
    failure is answered with: a top-level list over its schema bound gets the API's own error
    code; a wrong-length item inside it (``points.0``) is a 422 naming the item."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return ApiError(422, "invalid_request", "request body is not valid JSON")
        if not loc and isinstance(err.get("input"), bytes):
            return ApiError(
                415, "unsupported_media_type",
                "request body must be JSON: send it with Content-Type: application/json",
            )  # fmt: skip
        if err.get("type") == "too_long" and len(loc) == 1 and loc[0] in limits:
            return limits[loc[0]](int(err.get("ctx", {}).get("actual_length", 0)))
        if loc == ["file"]:  # the upload's part: missing, or sent as a text field
            hint = NO_FILE_PART if err.get("type") == "missing" else TEXT_NOT_FILE
            return ApiError(422, "invalid_request", hint)
        if err.get("type") == "extra_forbidden":  # e.g. the Python API's "point_coords"
            parts.append(f"{'.'.join(loc)}: unknown field (the fields are listed at /docs)")
            continue
        parts.append(
            _shape_message(err, loc) or f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}"
        )
    return ApiError(422, "invalid_request", "; ".join(dict.fromkeys(parts)))


def _unparsed_body(cause: ValueError | RecursionError) -> str:
    """Why a JSON body could not be parsed, where FastAPI says only "There was an error
    parsing the body" (text not UTF-8, e.g. a Latin-1 vocabulary; a number of thousands of
    digits)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"request body must be UTF-8 JSON (byte {cause.object[cause.start]:#04x} at {cause.start})"
    return f"request body is not valid JSON ({first_line(cause)})"


def install_error_handlers(app: FastAPI, limits: dict[str, TooLong]) -> None:
    """Answer every error raised inside ``app`` with the JSON envelope."""

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or STATUS_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        cause = exc.__cause__  # FastAPI's own 400 for a body it could not parse:
        if (
            not isinstance(exc, ApiError)
            and exc.status_code == 400
            and isinstance(cause, (ValueError, RecursionError))  # nested too deeply
        ):
            code, message = "invalid_request", _unparsed_body(cause)
            return error_response(422, code, message)
        if exc.status_code in (404, 405) and not isinstance(exc, ApiError):
            message = f"{message}: {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, exc.headers)

    @app.exception_handler(InputError)
    def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return error_response(400, "invalid_input", str(exc))

    @app.exception_handler(NotReadyError)
    def _not_ready(_: Request, exc: NotReadyError) -> JSONResponse:
        return error_response(409, "not_ready", str(exc))

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(exc, limits)
        return error_response(error.status, error.code, error.message)


def _closing_delimiter(scope: Scope) -> bytes:
    """``--BOUNDARY--``, the line that ends a ``multipart/form-data`` body (RFC 2046), for such
    a request with a boundary; else b""."""
    kind, *params = dict(scope["headers"]).get(b"content-type", b"").split(b";")
    if kind.strip().lower() != b"multipart/form-data":
        return b""
    for param in params:
        key, _, value = param.partition(b"=")
        boundary = value.strip().strip(b'"')
        if key.strip().lower() == b"boundary" and boundary:
            return b"--" + boundary + b"--"
    return b""


def _cut_short(closing: bytes) -> str:
    """The message for a multipart body without its closing delimiter ``closing``."""
    return (
        f"multipart body ends before its closing boundary line "
        f"{closing.decode('latin-1')!r}: the upload was cut short (send the whole file again)"
    )


class GuardMiddleware:
    """Rejects bodies over ``limit_for(scope)`` early and turns crashes into ``internal_error``.

    A body that has not arrived whole ``timeout_s`` seconds after its request began is a 408
    ``body_timeout`` (the connection then closes): a client sending a body slowly, or part of
    one and then nothing, held its connection and handler for as long as it liked.

    ``limit_for`` gives ``(max_bytes, error)`` for a request. A declared ``Content-Length``
    over the limit is answered at once, without reading the body; a body without one is
    counted as it arrives and stopped when it passes the limit. A ``multipart/form-data`` body
    that ends without its closing boundary line (an upload cut short) is a 400 saying so, where
    the form parser found no ``file`` part.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[Scope], tuple[int, ApiError]],
        timeout_s: float = 120.0,
    ) -> None:
        self.app = app
        self.limit_for, self.timeout_s = limit_for, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, error = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await error_response(error.status, error.code, error.message)(scope, receive, send)
            return
        received = 0
        started = False
        closing = _closing_delimiter(scope)
        seen = b""  # the body's last len(closing) - 1 bytes, then b"" once closing was seen
        deadline, whole = time.monotonic() + self.timeout_s, False

        async def limited_receive() -> Message:
            nonlocal received, seen, closing, whole
            if whole:  # e.g. Request.is_disconnected, waiting for the client to hang up
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408, "body_timeout",
                    f"the request body did not arrive within {self.timeout_s:g} s",
                ) from None  # fmt: skip
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise ApiError(error.status, error.code, error.message)
            if closing and message["type"] == "http.request":
                seen = seen + chunk
                if closing in seen:
                    closing = seen = b""
                elif not message.get("more_body", False):
                    raise ApiError(400, "bad_request", _cut_short(closing))
                else:
                    seen = seen[-(len(closing) - 1) :]
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception as exc:
            if started:
                raise
            out_of_memory = out_of_memory_line(exc)
            if isinstance(exc, ApiError):
                response = error_response(exc.status, exc.code, exc.message)
            elif out_of_memory is not None:
                LOG.warning("%s %s: %s", scope["method"], scope["path"], out_of_memory)
                response = error_response(503, "out_of_memory", out_of_memory)
            else:
                LOG.exception("unexpected error in %s %s", scope["method"], scope["path"])
                response = error_response(500, "internal_error", INTERNAL_MESSAGE)
            await response(scope, receive, send)
