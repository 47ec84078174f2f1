"""``ovsam models``: list registered models (aliases, the weights each loads, whether they are
cached) and every registered weights file."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list models and weights",
        description="List the registered models with their aliases and the weights each loads "
        "(with cache status; 'ovsam download MODEL' fetches them), then every registered "
        "weights file.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.registry_info import describe_models, describe_weights

    # both lists first: a bad cache folder (a relative OVSAM_CACHE_DIR) is then one error line,
    # not an error after a printed header
    models, weights = describe_models(), describe_weights()
    print("models (aliases), each with the weights it loads:")
    for line in models:
        print(f"  {line}")
    print("weights:")
    for line in weights:
        print(f"  {line}")
    return 0
