"""``ovsam models``: list registered models and weights, and which weights are cached."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list models and weights")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.build import list_models
    from ovsam.registry_info import describe_weights

    print("models:")
    for name in list_models():
        print(f"  {name}")
    print("weights:")
    for line in describe_weights():
        print(f"  {line}")
    return 0
