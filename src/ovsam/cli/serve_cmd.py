"""``ovsam serve``: the web page and HTTP API (needs the ``[serve]`` extra)."""

from __future__ import annotations

import argparse
import socket
from typing import TYPE_CHECKING

from ovsam.cli.arg_types import int_in_range
from ovsam.cli.segment_cmd import DEFAULT_MODEL, add_clip_arguments
from ovsam.errors import InputError, OVSamError, first_line
from ovsam.serve.settings import MIB, SERVE_RECOGNIZERS, LimitError, ServeSettings

if TYPE_CHECKING:
    import uvicorn

SHUTDOWN_GRACE_S = 10
"""Seconds requests in progress may take to finish once the server is told to stop."""

# ServeSettings limit -> (option, bytes per unit of the option or 1, help). The option's
# default is the field's default; ServeSettings checks the value (LimitError).
LIMIT_OPTIONS: dict[str, tuple[str, int, str]] = {
    "max_upload_bytes": ("--max-upload-mb", MIB, "largest uploaded image file, in MiB"),
    "max_body_bytes": ("--max-body-mb", MIB, "largest JSON request body, in MiB"),
    "max_pixels": ("--max-pixels", 1, "largest image (width x height pixels)"),
    "max_points": ("--max-points", 1, "points (clicks) in one request"),
    "max_vocabulary": (
        "--max-vocabulary", 1, "class names in one custom vocabulary, synonyms included"
    ),
    "max_name_chars": ("--max-name-chars", 1, "characters in one class name"),
    "max_custom_vocabularies": (
        "--max-custom-vocabularies", 1, "custom vocabularies kept (least recently used dropped)"
    ),
    "cache_images": ("--cache-size", 1, "embedded images kept (LRU)"),
    "cache_bytes": ("--cache-mb", MIB, "memory for embedded images (LRU), in MiB"),
    "masks_per_image": ("--masks-per-image", 1, "previous masks kept per image for refinement"),
    "body_timeout_s": (
        "--body-timeout", 1, "seconds a request body may take to arrive whole (else 408)"
    ),
}  # fmt: skip


def _dest(option: str) -> str:
    """The attribute of the parsed namespace that holds ``option``."""
    return option.removeprefix("--").replace("-", "_")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ovsam serve`` and its options."""
    parser = subparsers.add_parser(
        "serve",
        help="start the web page and HTTP API",
        description="Serve the interactive page at / and the JSON API under /v1 "
        "(OpenAPI at /docs). Binds to loopback unless --host says otherwise.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int_in_range(0, 65535),
        default=8000,
        help="(default 8000; 0 = any free port)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registered model name")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file or weights name")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--labels", action="store_true",
        help="name masks (downloads the recognition weights on first use)",
    )  # fmt: skip
    parser.add_argument(
        "--recognizer", choices=SERVE_RECOGNIZERS, default=None,
        help="image-crop (default: CLIP on the masked crop, beside --model) or ovsam "
        "(Open-Vocabulary SAM segments and names; --model ovsam_coco unless it is an OV-SAM "
        "model); implies --labels",
    )  # fmt: skip
    add_clip_arguments(parser)
    limits = parser.add_argument_group("limits")
    for name, (option, unit, text) in LIMIT_OPTIONS.items():
        default = getattr(ServeSettings, name) // unit
        limits.add_argument(
            option, type=int, default=default, metavar="MIB" if unit == MIB else "N",
            help=f"{text} (default {default})",
        )  # fmt: skip
    parser.set_defaults(run=run)


def build_settings(args: argparse.Namespace) -> ServeSettings:
    """The :class:`ServeSettings` of the parsed options; a limit out of range is an
    :class:`InputError` naming its option, in the option's unit."""
    from ovsam.recognizers import default_clip_model, default_clip_weights

    limits = {
        name: getattr(args, _dest(opt)) * unit for name, (opt, unit, _) in LIMIT_OPTIONS.items()
    }
    recognizer = args.recognizer or "image-crop"
    chosen = (recognizer, args.model, args.checkpoint)
    try:
        return ServeSettings(
            model=args.model,
            checkpoint=args.checkpoint,
            device=args.device,
            # any recognition option turns labels on, as for segment (they were ignored)
            labels=args.labels
            or any(v is not None for v in (args.recognizer, args.clip, args.clip_weights)),
            recognizer=recognizer,
            random_recognition=args.random_recognition,
            clip_model=args.clip or default_clip_model(*chosen),
            clip_weights=args.clip_weights or default_clip_weights(*chosen),
            **limits,
        )
    except LimitError as exc:
        option, unit, _ = LIMIT_OPTIONS[exc.name]
        low, high = -(-exc.low // unit), exc.high // unit
        suffix = " (MiB)" if unit == MIB else ""
        raise InputError(
            f"{option} must be an integer from {low} to {high}{suffix}, "
            f"got {getattr(args, _dest(option))}"
        ) from exc


def run(args: argparse.Namespace) -> int:
    """Check the options, build the app (loading the model) and serve it until interrupted."""
    try:
        import uvicorn

        from ovsam.serve.app import create_app, default_engine
    except ImportError as exc:
        raise _needs_serve_extra(f"{exc.name} is missing") from exc
    if not _multipart_installed():  # checked before the model loads
        raise _needs_serve_extra("python-multipart is missing")
    settings = build_settings(args)
    sockets = listen_sockets(args.host, args.port)  # before the model loads: busy ports fail fast
    try:
        try:
            app = create_app(settings, default_engine)
        except RuntimeError as exc:  # FastAPI refuses upload routes without python-multipart
            if "python-multipart" not in str(exc):
                raise
            raise _needs_serve_extra(f"FastAPI: {first_line(exc)}") from exc
        port = sockets[0].getsockname()[1]
        engine = app.state.engine
        url = f"http://{_url_host(args.host)}:{port}/"
        print(f"ovsam: serving {engine.model_name} on {url} (API docs at /docs)")
        recognizer = engine.recognizer
        print(f"ovsam: {'labels' if recognizer.available else 'no labels'}: {recognizer.message}")
        uvicorn.Server(uvicorn_config(app, args.host, port)).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    return 0


def uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for ``app``: on SIGTERM or Ctrl-C, requests in progress get
    :data:`SHUTDOWN_GRACE_S` seconds to finish (a client that never sends the rest of its
    body kept the server from exiting at all)."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )  # fmt: skip


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets listening on every address of ``host`` (``localhost`` may be 127.0.0.1 and
    ::1, as uvicorn would bind them) at ``port`` (0: a free one, the same for all); connections
    wait until uvicorn serves. An address that cannot be bound (in use, not local, unknown
    host) is an :class:`InputError` in one line, with every socket closed."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
            if sockets[1:]:  # port 0: the port the first address got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen()  # a second server starting meanwhile fails at its bind
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sockets


def _multipart_installed() -> bool:
    """Whether python-multipart (``python_multipart``; ``multipart`` before its 0.0.13), which
    FastAPI needs for image uploads, is importable. Without it FastAPI fails only once the app
    declares its routes, after the model has loaded, and logs a multi-line error first."""
    from importlib.util import find_spec

    return find_spec("python_multipart") is not None or find_spec("multipart") is not None


def _needs_serve_extra(reason: str) -> OVSamError:
    """The one-line error for a missing or unusable part of the ``[serve]`` extra."""
    return OVSamError(
        f"the web server needs the [serve] extra ({reason}): pip install 'ovsam[serve]'"
    )


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (``[::1]``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
