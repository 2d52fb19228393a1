"""Connecting to NATS: server lists, credentials, TLS, and one readable error when it fails.

Credentials come from the URL (``nats://user:pass@host``), from ``NatsAuth`` fields, or from
``DISROUTER_NATS_*`` environment variables; secrets are never logged (URLs are shown redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from nats import errors as nats_errors
from nats.aio.msg import Msg

from .nats_internals import TlsRequiringClient
from .subjects import subject_token

log = structlog.get_logger("disrouter.mesh.connection")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NATS_URL_ENV = "DISROUTER_NATS"
# NatsAuth field -> the environment variable it falls back to.
NATS_AUTH_ENV = {
    "user": "DISROUTER_NATS_USER",
    "password": "DISROUTER_NATS_PASSWORD",
    "token": "DISROUTER_NATS_TOKEN",
    "creds": "DISROUTER_NATS_CREDS",
    "nkey": "DISROUTER_NATS_NKEY",
    "ca": "DISROUTER_NATS_CA",
    "cert": "DISROUTER_NATS_CERT",
    "key": "DISROUTER_NATS_KEY",
    "inbox_prefix": "DISROUTER_NATS_INBOX_PREFIX",
}


class MeshConnectionError(Exception):
    """NATS could not be reached."""


class MeshAuthError(MeshConnectionError):
    """NATS refused the credentials, or the TLS handshake failed."""


class MeshPermissionError(MeshConnectionError):
    """The server denied a publish or subscribe: the user's permissions do not allow it."""


def default_nats_url() -> str:
    """``$DISROUTER_NATS`` or ``nats://127.0.0.1:4222``."""
    return os.environ.get(NATS_URL_ENV) or DEFAULT_NATS_URL


def server_list(urls: str | list[str] | None) -> list[str]:
    """A comma-separated string or list of server URLs (default: ``default_nats_url()``)."""
    if urls is None:
        urls = default_nats_url()
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.split(",") if u.strip()]
    return [u if "://" in u else f"nats://{u}" for u in urls]


def redact(url: str) -> str:
    """``url`` with its secret masked: ``nats://user:***@host``, or ``nats://***@host`` for a token."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user + ':***' if has_password else '***'}@{host}"))


def _readable(path: str | None, what: str) -> None:
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"NATS {what} file {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class NatsAuth:
    """How to log in to NATS and verify it: secrets come from the environment or files, not flags."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None  # credentials file: user JWT + nkey seed (operator mode, `nsc`)
    nkey: str | None = None  # nkey seed file
    ca: str | None = None  # CA bundle that signed the server's certificate; TLS becomes required
    cert: str | None = None  # client certificate for mutual TLS (with ``key``)
    key: str | None = None
    inbox_prefix: str | None = None  # reply subjects; default _INBOX.<user>, else _INBOX

    @classmethod
    def from_env(cls, **given: str | None) -> "NatsAuth":
        """Fields from ``given`` where not None, the rest from their ``DISROUTER_NATS_*`` variable."""
        values = {name: os.environ.get(var) or None for name, var in NATS_AUTH_ENV.items()}
        return cls(**{**values, **{name: value for name, value in given.items() if value is not None}})

    @property
    def wants_tls(self) -> bool:
        return bool(self.ca or self.cert)

    def connect_options(self, servers: list[str] | None = None) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``connect``; ValueError for settings that contradict.

        The user name (given, else from the first URL with a password) picks the inbox prefix.
        """
        if self.user and not self.password:
            raise ValueError(f"NATS user {self.user!r} needs a password: set DISROUTER_NATS_PASSWORD or --nats-password-file")
        if self.password and not self.user:
            raise ValueError("a NATS password needs a user name: --nats-user or DISROUTER_NATS_USER")
        if self.user and self.token:
            raise ValueError("give a NATS user and password or a token, not both")
        if self.creds and self.nkey:
            raise ValueError("give a NATS credentials file or an nkey seed file, not both")
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate and its key go together: --nats-cert and --nats-key")
        if (self.creds or self.nkey) and importlib.util.find_spec("nkeys") is None:
            raise ValueError("NATS nkey and credentials files need the nkeys package: pip install 'nats-py[nkeys]'")
        for path, what in ((self.creds, "credentials"), (self.nkey, "nkey seed"), (self.ca, "CA"), (self.cert, "certificate"), (self.key, "key")):
            _readable(path, what)
        options: dict[str, Any] = {}
        if self.user:
            options |= {"user": self.user, "password": self.password}
        if self.token:
            options["token"] = self.token
        if self.creds:
            options["user_credentials"] = self.creds
        if self.nkey:
            options["nkeys_seed"] = self.nkey
        if self.wants_tls:
            options["tls"] = self._tls_context()
        user = self.user or next((p.username for p in map(urlsplit, servers or []) if p.username and p.password), None)
        prefix = self.inbox_prefix or (f"_INBOX.{subject_token(user)}" if user else None)
        if prefix:
            options["inbox_prefix"] = prefix
        return options

    def _tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca)
            if self.cert:
                context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load the NATS TLS files: {exc.reason or exc}") from None
        return context


class MeshNats(TlsRequiringClient):
    """nats-py's client, plus: a permission violation fails the request that caused it, and TLS,
    once asked for, is required (credentials are never sent in the clear)."""

    def __init__(self, require_tls: bool = False) -> None:
        super().__init__()
        self.require_tls = require_tls
        self.denials: list[str] = []
        self._requests: dict[asyncio.Task, str] = {}  # task waiting for a reply -> its subject
        self._denied: dict[asyncio.Task, str] = {}  # tasks this client cancelled -> why

    @property
    def server(self) -> str | None:
        """The URL of the server connected to, with any secret masked (safe to log)."""
        url = self.connected_url
        return redact(url.geturl()) if url else None

    def note_denial(self, text: str) -> None:
        """Record a permission violation the server reported and fail the requests it concerns."""
        self.denials = [*self.denials[-19:], text.lower()]
        for task, subject in list(self._requests.items()):
            if task not in self._denied and (denial := self.denial_for(subject)):
                self._denied[task] = denial
                task.cancel()

    def denial_for(self, subject: str) -> str | None:
        """Why a request to ``subject`` cannot work (publish denied, or replies denied), if known."""
        inbox = self.new_inbox().rsplit(".", 1)[0]  # the inbox prefix
        for text in reversed(self.denials):
            if f'publish to "{subject.lower()}"' in text:
                return f"NATS denied publishing to {subject} (the user's permissions)"
            if f'subscription to "{inbox.lower()}.' in text:
                return f"NATS denied subscribing to {inbox}.> for replies (the user's permissions; see --nats-inbox-prefix)"
        return None

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False, headers: dict[str, Any] | None = None) -> Msg:
        """nats-py's request, but MeshPermissionError at once when the server denies it."""
        if denial := self.denial_for(subject):
            raise MeshPermissionError(denial)
        task = asyncio.current_task()
        assert task is not None
        self._requests[task] = subject
        try:
            return await super().request(subject, payload, timeout=timeout, old_style=old_style, headers=headers)
        except asyncio.CancelledError:
            denial = self._denied.pop(task, None)
            if denial is None or (hasattr(task, "uncancel") and task.uncancel() > 0):
                raise  # cancelled by someone else too
            raise MeshPermissionError(denial) from None
        finally:
            self._requests.pop(task, None)
            self._denied.pop(task, None)


def _connect_error(errors: list[BaseException], servers: str, tls: bool = False) -> MeshConnectionError:
    """One readable error from what the attempts raised: refused credentials and TLS trouble first.

    With TLS, a server that refuses the client's certificate (or its absence) may just drop the
    socket after the handshake; the client then sees a broken pipe, a reset or an EOF, depending
    on timing. Those count as a refused handshake too.
    """
    texts = [(exc, str(exc) or type(exc).__name__) for exc in errors]
    for exc, text in texts:
        if isinstance(exc, nats_errors.AuthorizationError) or "authorization violation" in text.lower():
            return MeshAuthError(f"NATS at {servers} refused the credentials (Authorization Violation)")
    for exc, text in texts:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return MeshAuthError(f"NATS at {servers}: TLS certificate not trusted ({exc.verify_message})")
        if isinstance(exc, ssl.SSLError):
            return MeshAuthError(f"NATS at {servers}: TLS handshake failed ({exc.reason or exc})")
        if "tls was asked for" in text.lower():
            return MeshAuthError(f"NATS at {servers} does not offer TLS, which --nats-ca/--nats-cert require")
    for exc, text in texts:
        if tls and _dropped(exc, text):
            return MeshAuthError(f"NATS at {servers} closed the TLS connection ({text}): it may require a client certificate (--nats-cert and --nats-key) or refuse this one")
    return MeshConnectionError(f"cannot reach NATS at {servers} ({texts[-1][1] if texts else 'no attempt made'})")


def _dropped(exc: BaseException, text: str) -> bool:
    """The peer closed an established connection (not: refused or unreachable)."""
    closed = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError, asyncio.IncompleteReadError)
    return isinstance(exc, closed) or any(sign in text.lower() for sign in ("broken pipe", "connection reset", "unexpected eof"))


async def _first_connect(connecting: Coroutine[Any, Any, None], tls_failed: asyncio.Event) -> None:
    """Await nats-py's connect, but give up at a failed TLS handshake: nats-py 2.16 then hangs
    closing the half-upgraded socket instead of trying again."""
    attempt = asyncio.ensure_future(connecting)
    failed = asyncio.ensure_future(tls_failed.wait())
    try:
        await asyncio.wait({attempt, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failed.cancel()
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
    if attempt.cancelled():
        raise nats_errors.Error("nats: TLS handshake failed")
    attempt.result()


async def connect(urls: str | list[str] | None = None, name: str = "disrouter", auth: NatsAuth | None = None, **options: Any) -> MeshNats:
    """Connect (reconnecting forever once connected); MeshConnectionError (or MeshAuthError) if that fails.

    ``auth`` defaults to ``NatsAuth.from_env()``; ``options`` go to nats-py's ``connect`` as they are.
    """
    servers = server_list(urls)
    shown = ", ".join(redact(s) for s in servers)
    auth = NatsAuth.from_env() if auth is None else auth
    connected = False
    attempts: list[BaseException] = []
    tls_failed = asyncio.Event()
    nc = MeshNats(require_tls=auth.wants_tls or any(s.startswith("tls://") for s in servers))

    async def on_error(exc: Exception) -> None:
        if not connected:  # before the first connection the caller gets one error instead
            attempts.append(exc)
            if isinstance(exc, ssl.SSLError):
                tls_failed.set()
        elif "permissions violation" in str(exc).lower():
            nc.note_denial(str(exc))
            log.warning("nats_permission_denied", error=str(exc))
        else:
            log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected", server=nc.server)

    settings = dict(
        servers=servers,
        name=name,
        connect_timeout=2,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    settings.update(auth.connect_options(servers))
    settings.update(options)
    try:
        # Fail fast on the first connection; reconnect without limit afterwards.
        await _first_connect(nc.connect(**{**settings, "max_reconnect_attempts": 1}), tls_failed)
    except Exception as exc:
        if isinstance(exc, nats_errors.NoServersError) and attempts:
            exc = attempts.pop()  # the last attempt's own error says more
        raise _connect_error([*attempts, exc], shown, tls=nc.require_tls) from None
    if not nc.is_connected:  # nats-py 2.16 returns when the server closed the socket instead of answering PING
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)
        raise _connect_error([*attempts, ConnectionResetError("the server closed the connection instead of answering")], shown, tls=nc.require_tls)
    nc.options["max_reconnect_attempts"] = settings["max_reconnect_attempts"]
    connected = True
    log.debug("nats_connected", server=nc.server, name=name)
    return nc
