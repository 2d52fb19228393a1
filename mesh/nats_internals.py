"""The one place DiSRouter reaches into nats-py internals; checked against nats-py 2.16.

Everything else uses nats-py's public API. Each use below says why no public API does the job;
check them when upgrading nats-py.
"""

from __future__ import annotations

from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue


def kv_origin(kv: KeyValue) -> tuple[NATS, str]:
    """The connection and bucket name behind ``kv``.

    Why: a bucket can vanish with a restarted server (memory storage); Membership recreates it
    from the handle it was given, and KeyValue exposes neither its connection nor its name
    (``KeyValue._js._nc``, ``KeyValue._name``; ``status()`` needs the bucket to exist).
    """
    return kv._js._nc, kv._name


class TlsRequiringClient(NATS):
    """nats-py's client, except that once TLS is asked for, it never sends credentials in the clear.

    Why: nats-py connects in plain text to a server that does not offer TLS, even with a TLS
    context. ``_connect_command`` is the only hook between reading the server's INFO
    (``_server_info``) and sending CONNECT with the credentials.
    """

    require_tls: bool = False

    def _connect_command(self) -> bytes:
        if self.require_tls and not self._server_info.get("tls_required"):
            raise nats_errors.Error("nats: TLS was asked for but the server does not offer it")
        return super()._connect_command()
