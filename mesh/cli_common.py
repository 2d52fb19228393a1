"""Pieces shared by the `disrouter` and `disrouter-node` command lines."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .connection import default_nats_url


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one readable line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats",
        default=None,
        metavar="URL[,URL...]",
        help=f"NATS server URL(s) (default: $DISROUTER_NATS or {default_nats_url()})",
    )


def add_log_options(parser: argparse.ArgumentParser, default_format: str = "json") -> None:
    parser.add_argument("--log-format", choices=["json", "console"], default=default_format, help="log output (stderr)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def fail(prog: str, message: object) -> int:
    """Print one error line for ``prog`` and return the exit status for failures."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1
