"""``ovsam download NAME``: fetch registered weights into the cache and verify them."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download registered weights into the cache",
        description="Fetch weights (official URL first, then mirrors), verify size and sha256, "
        "and store them in the cache ($OVSAM_CACHE_DIR or ~/.cache/ovsam).",
    )
    parser.add_argument("names", nargs="*", help="weights names (see --list)")
    parser.add_argument("--list", action="store_true", help="list registered weights and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.errors import InputError
    from ovsam.registry_info import describe_weights
    from ovsam.weights import get_weights_spec, resolve_weights

    if args.list:
        for line in describe_weights():
            print(line)
        return 0
    if not args.names:
        raise InputError("name the weights to download (ovsam download --list shows them)")
    for name in args.names:  # every name checked before anything is fetched
        get_weights_spec(name)
    for name in args.names:
        print(resolve_weights(name, progress=not args.quiet))
    return 0
