"""``ovsam serve``: the web page and HTTP API (needs the ``[serve]`` extra)."""

from __future__ import annotations

import argparse

from ovsam.cli.segment_cmd import DEFAULT_MODEL, add_clip_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the web page and HTTP API",
        description="Serve the interactive page at / and the JSON API under /v1 "
        "(OpenAPI at /docs). Binds to loopback unless --host says otherwise.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registered model name")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file or weights name")
    parser.add_argument("--cache-size", type=int, default=16, help="embedded images kept (LRU)")
    parser.add_argument("--labels", action="store_true", help="name masks with CLIP (downloads it)")
    add_clip_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.errors import OVSamError

    try:
        import uvicorn

        from ovsam.serve.app import create_app, default_engine
        from ovsam.serve.settings import ServeSettings
    except ImportError as exc:
        raise OVSamError(
            f"the web server needs the [serve] extra ({exc.name} is missing): "
            "pip install 'ovsam[serve]'"
        ) from exc
    settings = ServeSettings(
        model=args.model,
        checkpoint=args.checkpoint,
        cache_images=args.cache_size,
        labels=args.labels,
        random_recognition=args.random_recognition,
        clip_model=args.clip,
        clip_weights=args.clip_weights,
    )
    app = create_app(settings, default_engine)
    print(f"ovsam: serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
