"""``ovsam download NAME... | --list [NAME...] | NAME --from FILE``: fetch registered weights
(or a registered model's weights) into the cache and verify them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download registered weights into the cache",
        description="Fetch weights (official URL first, then mirrors), verify size and sha256, "
        "and store them in the cache ($OVSAM_CACHE_DIR or ~/.cache/ovsam). Weights already "
        "cached are hashed again and fetched again if they fail. A model name (ovsam models) "
        "stands for the weights it loads (every file of an OV-SAM model). Every name is "
        "tried; each failure is reported when it happens and counted at the end (exit "
        "status 2).",
    )
    parser.add_argument(
        "names", nargs="*", help="weights names (see --list) or model names (see ovsam models)"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the registered weights (or only NAMEs) and exit"
    )
    parser.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        metavar="FILE",
        help="add a file you downloaded yourself as NAME's weights (verified: size and sha256 "
        "where published, else it must load safely, the SAM releases must fit their "
        "model's keys and shapes and the OV-SAM parts hold their keys (e.g. neck_student.*); "
        "the open_clip files are checked when a model is built from them; then copied)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List, copy in (``--from``) or fetch the named weights; 2 if any of them failed."""
    from ovsam.errors import InputError, OVSamError
    from ovsam.registry_info import describe_weights, weights_specs
    from ovsam.weights import copy_into_cache, download_weights

    if args.list:
        if args.from_file is not None:
            raise InputError("--list and --from cannot be combined")
        for line in describe_weights(args.names or None):
            print(line)
        return 0
    if not args.names:
        raise InputError("name the weights to download (ovsam download --list shows them)")
    specs = weights_specs(args.names)  # every name checked before anything is fetched
    progress = not args.quiet
    if args.from_file is not None:
        if len(args.names) == 1 and len(specs) > 1:  # a model of several files
            raise InputError(
                f"--from FILE adds one weights file, but {args.names[0]} loads {len(specs)}: "
                f"name one of {', '.join(spec.name for spec in specs)}"
            )
        if len(specs) != 1:
            raise InputError("--from FILE adds one weights file: name exactly one")
        print(copy_into_cache(specs[0], args.from_file, progress=progress))
        return 0
    failed: list[str] = []
    said: set[str] = set()  # a reason shared by several names (an unwritable cache) said once
    for spec in specs:
        try:
            print(download_weights(spec, progress=progress, verify=True), flush=True)
        except OVSamError as exc:  # said now: an interrupt later must not lose it
            failed.append(spec.name)
            line = f"ovsam download: error: {exc}"
            if line not in said:
                said.add(line)
                print(line, file=sys.stderr, flush=True)
    if len(specs) > 1 and failed:  # one name: its error line says it all
        print(
            f"ovsam download: {len(failed)} of {len(specs)} weights failed: {', '.join(failed)}",
            file=sys.stderr,
        )
    return 2 if failed else 0
