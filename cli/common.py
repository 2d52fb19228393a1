"""Pieces shared by the `disrouter` and `disrouter-node` command lines."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from disrouter.mesh.connection import NatsAuth, default_nats_url
from disrouter.node.settings import flag_of


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one readable line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """``--nats`` and the NATS credential and TLS flags; secrets only from files or the environment."""
    group = parser.add_argument_group(
        "NATS connection",
        "Each flag falls back to a DISROUTER_NATS_* variable (e.g. --nats-ca: $DISROUTER_NATS_CA). "
        "Secrets never go in flags: the password comes from $DISROUTER_NATS_PASSWORD or a file, "
        "the token from $DISROUTER_NATS_TOKEN or a file.",
    )
    group.add_argument(
        "--nats",
        default=None,
        metavar="URL[,URL...]",
        help=f"NATS server URL(s); user:password@ in a flag shows in ps, so put such URLs in $DISROUTER_NATS "
        f"(default: $DISROUTER_NATS or {default_nats_url()})",
    )
    group.add_argument("--nats-user", metavar="NAME", help="user name; password from $DISROUTER_NATS_PASSWORD or --nats-password-file")
    group.add_argument("--nats-password-file", metavar="FILE", help="file holding the user's password")
    group.add_argument("--nats-token-file", metavar="FILE", help="file holding an auth token ($DISROUTER_NATS_TOKEN)")
    group.add_argument("--nats-creds", metavar="FILE", help="credentials file: user JWT and nkey seed ($DISROUTER_NATS_CREDS)")
    group.add_argument("--nats-nkey", metavar="FILE", help="nkey seed file ($DISROUTER_NATS_NKEY)")
    group.add_argument("--nats-ca", metavar="FILE", help="CA certificate(s) that signed the server's; TLS becomes required")
    group.add_argument("--nats-cert", metavar="FILE", help="client certificate for mutual TLS (with --nats-key)")
    group.add_argument("--nats-key", metavar="FILE", help="the client certificate's private key")
    group.add_argument("--nats-inbox-prefix", metavar="SUBJECT", help="subject prefix for replies (default: _INBOX.<user>, else _INBOX)")


def read_secret(path: str | None, flag: str) -> str | None:
    """The secret in file ``path`` without surrounding whitespace; ValueError naming ``flag``."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            secret = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{flag} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise ValueError(f"{flag} {path} is empty")
    return secret


def nats_auth(args: argparse.Namespace) -> NatsAuth:
    """The NATS credentials and TLS files from the flags, else from the DISROUTER_NATS_* variables."""
    return NatsAuth.from_env(
        user=args.nats_user,
        password=read_secret(args.nats_password_file, "--nats-password-file"),
        token=read_secret(args.nats_token_file, "--nats-token-file"),
        creds=args.nats_creds,
        nkey=args.nats_nkey,
        ca=args.nats_ca,
        cert=args.nats_cert,
        key=args.nats_key,
        inbox_prefix=args.nats_inbox_prefix,
    )


def _value_type(annotation: Any) -> Any:  # noqa: ANN401 - a type annotation
    """``int`` for ``int | None``: the type a flag's text converts to."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, groups: dict[str, str] | None = None) -> None:
    """One flag per field of the settings dataclass ``cls`` (help, default, type from the field), like TRL's parser.

    A field's ``group`` metadata puts its flag under ``groups[group]``, the title of an argument group.
    """
    hints = typing.get_type_hints(cls)
    made: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta, default = f.metadata, f.default
        group = meta.get("group")
        target = made.setdefault(group, parser.add_argument_group(groups[group])) if group and groups else parser
        text = meta["help"] + (f" (default {default})" if default not in (None, False) else "")
        if hints[f.name] is bool:
            target.add_argument(flag_of(f), dest=f.name, action="store_true", help=text)
            continue
        extra = {key: meta[key] for key in ("metavar", "choices") if key in meta}
        target.add_argument(flag_of(f), dest=f.name, type=_value_type(hints[f.name]), default=default, help=text, **extra)


Settings = TypeVar("Settings")


def dataclass_from_args(cls: type[Settings], args: argparse.Namespace) -> Settings:
    """The settings dataclass ``cls`` from parsed flags made by ``add_dataclass_options``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_log_options(parser: argparse.ArgumentParser, default_format: str = "json") -> None:
    parser.add_argument("--log-format", choices=["json", "console"], default=default_format, help="log output (stderr)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def fail(prog: str, message: object) -> int:
    """Print one error line for ``prog`` and return the exit status for failures."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def run_command(prog: str, run: Callable[[], int], errors: tuple[type[BaseException], ...]) -> int:
    """``run()``'s exit status: one error line (status 1) for the ``errors`` it expects, 130 on Ctrl-C."""
    try:
        return run()
    except errors as exc:
        return fail(prog, exc)
    except KeyboardInterrupt:
        return 130
