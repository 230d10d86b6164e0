"""The `tricopy` command line (the patent's RCM, remote copy manager).

Each responsibility registers its own subcommands: a module in
``COMMAND_MODULES`` exposes ``register(subparsers)`` and sets ``func`` on the
parsers it adds.  ``func(args)`` returns the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = [
    "tricopy.host.tools.bench",
    "tricopy.host.engine.serve",
    "tricopy.boards.build",
    "tricopy.host.sites_cli",
    "tricopy.host.rcm.pairs",
    "tricopy.host.rcm.status",
    "tricopy.host.rcm.takeover",
    "tricopy.host.rcm.failback",
    "tricopy.host.rcm.verify",
    "tricopy.host.tools.demo",
    "tricopy.host.tools.certs",
    "tricopy.host.tools.linkemu",
    "tricopy.host.tools.chaos",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tricopy",
        description="Three-data-center remote copy: primary -> relay -> secondary.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for frame traces)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
