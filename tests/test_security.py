"""NATS security: the shipped permission layout on a real nats-server, every way to log in, TLS.

The main server runs k8s/nats/disrouter-auth.conf unchanged (passwords from its environment) with a
real `disrouter-node` process that logs in with the password in its URL.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError

from disrouter.local.nats_server import NatsServer
from disrouter.mesh.client import MeshClient
from disrouter.mesh.connection import MeshAuthError, MeshConnectionError, MeshPermissionError, NatsAuth, connect, redact
from disrouter.mesh.membership import list_cards, open_registry
from disrouter.mesh.protocol import Answer, decode_query, encode
from disrouter.mesh.subjects import Subjects

BIN = Path(sys.executable).parent
AUTH_CONF = Path(__file__).resolve().parents[1] / "k8s" / "nats" / "disrouter-auth.conf"
SUBJECTS = Subjects("disrouter")
# nats-server parses an environment value as a config value: start it with a letter (or quote it).
PASSWORDS = {user: "pw" + secrets.token_urlsafe(18) for user in ("client", "node", "gateway", "admin")}
NODE_ID = "secure-node"


def with_login(url: str, user: str, password: str) -> str:
    return url.replace("nats://", f"nats://{user}:{password}@", 1)


def login(user: str, password: str | None = None) -> NatsAuth:
    return NatsAuth(user=user, password=password or PASSWORDS[user])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without DISROUTER_NATS* settings, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DISROUTER_NATS")}, **extra}


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / args[0]), *args[1:], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env or clean_env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def one_line_error(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]


async def spy(nc: NATS, *subjects: str) -> list[str]:
    """Subjects of every message that reaches ``subjects`` (seen by a privileged connection)."""
    seen: list[str] = []

    async def record(msg) -> None:  # noqa: ANN001
        seen.append(msg.subject)

    for subject in subjects:
        await nc.subscribe(subject, cb=record)
    await nc.flush()
    return seen


# --- the shipped permission layout -------------------------------------------------------------


@dataclass
class Secured:
    url: str
    node_log: Path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """nats-server with the shipped config and one instant-backend node logged in as `node`."""
    env = {f"DISROUTER_{user.upper()}_PASSWORD": password for user, password in PASSWORDS.items()}
    node_log = tmp_path_factory.mktemp("secure") / "node.log"
    with NatsServer(config=AUTH_CONF, env=env) as server:
        with open(node_log, "wb") as log_file:
            node = subprocess.Popen(
                [str(BIN / "disrouter-node"), "--backend", "instant", "--model", "x", "--cost", "0.1", "--entry",
                 "--node-id", NODE_ID, "--nats", with_login(server.url, "node", PASSWORDS["node"]), "--log-level", "info"],
                stdout=subprocess.DEVNULL, stderr=log_file, env=clean_env(),
            )
        try:
            asyncio.run(_wait_registered(server.url, node))
            yield Secured(server.url, node_log)
        finally:
            node.terminate()
            node.wait(30)


async def _wait_registered(url: str, node: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait for the node's card; the node itself creates the bucket (its permissions allow that)."""
    nc = await connect(url, auth=login("admin"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert node.poll() is None, f"disrouter-node exited with {node.returncode}"
            assert time.monotonic() < deadline, "the node did not register"
            try:
                kv = await nc.jetstream().key_value(SUBJECTS.registry_bucket)
                if NODE_ID in {card.node_id for card in await list_cards(kv)}:
                    return
            except BucketNotFoundError:
                pass
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def test_anonymous_and_wrong_passwords_are_refused(secured: Secured) -> None:
    for auth in (NatsAuth(), login("client", "wrong"), login("nobody", "x")):
        with pytest.raises(MeshAuthError, match=r"refused the credentials \(Authorization Violation\)"):
            await connect(secured.url, auth=auth)
    with pytest.raises(MeshAuthError) as refused:
        await connect(with_login(secured.url, "client", "not-the-password"), auth=NatsAuth())
    assert "not-the-password" not in str(refused.value) and "client:***@" in str(refused.value)


async def test_a_client_asks_the_mesh_with_a_password_in_the_url_or_given_apart(secured: Secured) -> None:
    for url, auth in ((with_login(secured.url, "client", PASSWORDS["client"]), NatsAuth()), (secured.url, login("client"))):
        async with await MeshClient.connect(url, auth=auth) as client:
            answer = await client.ask("hello", timeout=10)
            chunks = [event async for event in client.stream("hello again", timeout=10)]
        assert answer.text == "ok" and answer.node_id == NODE_ID
        assert isinstance(chunks[-1], Answer) and chunks[-1].text == "ok"


async def test_a_client_cannot_reach_nodes_the_registry_or_other_clients_replies(secured: Secured) -> None:
    admin = await connect(secured.url, auth=login("admin"))
    client = await connect(secured.url, auth=login("client"))
    forged = encode({"messages": [{"role": "user", "content": "forged"}], "reply_to": "_INBOX.client.x"})
    targets = [SUBJECTS.node(NODE_ID), SUBJECTS.model("x"), f"$KV.{SUBJECTS.registry_bucket}.forged"]
    seen = await spy(admin, *targets)
    try:
        for subject in targets:
            await client.publish(subject, forged)
        with pytest.raises(MeshPermissionError, match="denied publishing to"):  # the registry's API: not even readable
            await open_registry(client, SUBJECTS)
        await client.subscribe("_INBOX.>")  # other users' replies
        await client.subscribe(SUBJECTS.ingress)  # posing as an entry node
        await client.flush()
        await admin.flush()
        await asyncio.sleep(0.2)

        assert seen == []
        for subject in [*targets, "_INBOX.>", SUBJECTS.ingress]:
            assert any(f'"{subject.lower()}"' in denial for denial in client.denials), (subject, client.denials)
        kv = await open_registry(admin, SUBJECTS)
        assert [card.node_id for card in await list_cards(kv)] == [NODE_ID]
        async with MeshClient(client) as mesh:  # and the node still answers this client
            assert (await mesh.ask("still there?", timeout=10)).node_id == NODE_ID
    finally:
        await client.close()
        await admin.close()


async def test_a_node_cannot_publish_outside_its_permissions(secured: Secured) -> None:
    admin = await connect(secured.url, auth=login("admin"))
    node = await connect(secured.url, auth=login("node"))
    seen = await spy(admin, "other.subject", SUBJECTS.ingress, "$JS.API.STREAM.DELETE.>")
    try:
        started = time.monotonic()
        with pytest.raises(MeshPermissionError, match="denied publishing to other.subject"):
            await node.request("other.subject", b"x", timeout=10)
        assert time.monotonic() - started < 5  # the denial fails the request; it does not time out
        await node.publish(SUBJECTS.ingress, b"{}")  # nodes never pose as clients
        with pytest.raises(MeshPermissionError):
            await node.jetstream().delete_key_value(SUBJECTS.registry_bucket)
        await node.flush()
        await admin.flush()
        await asyncio.sleep(0.2)
        assert seen == []
        assert any(f'"{SUBJECTS.ingress}"' in denial for denial in node.denials)
    finally:
        await node.close()
        await admin.close()


async def test_the_clis_log_in_and_fail_in_one_line(secured: Secured) -> None:
    client_env = clean_env(DISROUTER_NATS_PASSWORD=PASSWORDS["client"])
    code, out, err = await run_cli("disrouter", "ask", "--nats", secured.url, "--nats-user", "client", "hi", env=client_env)
    assert code == 0 and out.strip() == "ok", err
    code, out, err = await run_cli("disrouter", "ask", "--nats", with_login(secured.url, "client", PASSWORDS["client"]), "--stream", "hi")
    assert code == 0 and out.strip() == "ok", err
    code, out, err = await run_cli("disrouter", "status", "--json", env=clean_env(
        DISROUTER_NATS=secured.url, DISROUTER_NATS_USER="admin", DISROUTER_NATS_PASSWORD=PASSWORDS["admin"]))
    assert code == 0 and [card["node_id"] for card in json.loads(out)] == [NODE_ID], err

    started = time.monotonic()
    code, _, err = await run_cli("disrouter", "ask", "--nats", secured.url, "--nats-user", "client", "--prefix", "other", "hi", env=client_env)
    one_line_error(code, err, "forbidden: NATS denied publishing to other.ingress")
    assert time.monotonic() - started < 20  # not the 60 s answer timeout
    code, _, err = await run_cli("disrouter", "status", "--nats", secured.url, "--nats-user", "client", env=client_env)
    one_line_error(code, err, "NATS denied publishing to $JS.API.STREAM.INFO.KV_disrouter-nodes-disrouter")

    bad_env = clean_env(DISROUTER_NATS_PASSWORD="wrong")
    for command in (["disrouter", "ask", "hi"], ["disrouter", "status"],
                    ["disrouter-node", "--backend", "instant", "--model", "y", "--cost", "1"]):
        code, _, err = await run_cli(*command, "--nats", secured.url, "--nats-user", "client", env=bad_env)
        one_line_error(code, err, "refused the credentials (Authorization Violation)")
        assert "wrong" not in err
    code, _, err = await run_cli("disrouter", "ask", "--nats", secured.url, "--nats-user", "client", "hi")
    one_line_error(code, err, "needs a password: set DISROUTER_NATS_PASSWORD or --nats-password-file")
    code, _, err = await run_cli("disrouter", "ask", "--nats", secured.url, "--nats-token-file", "/no/such/token", "hi")
    one_line_error(code, err, "--nats-token-file /no/such/token: No such file or directory")


async def test_credentials_and_prompts_stay_out_of_the_node_log(secured: Secured) -> None:
    prompt = f"my secret question {secrets.token_hex(8)}"
    async with await MeshClient.connect(secured.url, auth=login("client")) as client:
        await client.ask(prompt, timeout=10)
    await asyncio.sleep(0.3)
    log = secured.node_log.read_text()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]

    assert PASSWORDS["node"] not in log and prompt not in log
    connected = next(e for e in events if e["event"] == "nats_connected")
    assert connected["server"] == redact(with_login(secured.url, "node", PASSWORDS["node"])) and "node:***@" in connected["server"]
    assert any(e["event"] == "answered" for e in events)


# --- tokens, nkeys, creds files ----------------------------------------------------------------


async def serve_answers(url: str, auth: NatsAuth) -> NATS:
    """A stand-in entry node that answers every query with 'ok' (logged in with ``auth``)."""
    nc = await connect(url, auth=auth)

    async def answer(msg) -> None:  # noqa: ANN001
        query = decode_query(msg.data)
        await msg.respond(encode(Answer(id=query.id, text="ok", model="m", node_id="stand-in", path=[])))

    await nc.subscribe(SUBJECTS.ingress, cb=answer)
    await nc.flush()
    return nc


def keypair(prefix: int):  # noqa: ANN201 - an nkeys.KeyPair
    nkeys = pytest.importorskip("nkeys")  # nats-py[nkeys]
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def signed_jwt(issuer, subject, claims: dict) -> str:  # noqa: ANN001
    """A NATS JWT (what `nsc` writes) for ``subject``, signed by ``issuer``."""
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps({"jti": _b64(os.urandom(16)), "iat": int(time.time()), "iss": issuer.public_key.decode(),
                            "sub": subject.public_key.decode(), "name": "test", "nats": {"version": 2, **claims}}).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


async def test_a_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    token = "tk" + secrets.token_urlsafe(24)  # starts with a letter: see PASSWORDS
    (tmp_path / "server.conf").write_text("authorization { token: $TEST_TOKEN }\n")
    (tmp_path / "token").write_text(token + "\n")
    with NatsServer(config=tmp_path / "server.conf", env={"TEST_TOKEN": token}) as server:
        responder = await serve_answers(server.url, NatsAuth(token=token))
        try:
            code, out, err = await run_cli("disrouter", "ask", "--nats", server.url, "--nats-token-file", str(tmp_path / "token"), "hi")
            assert code == 0 and out.strip() == "ok", err
            code, out, err = await run_cli("disrouter", "ask", "--nats", server.url, "hi", env=clean_env(DISROUTER_NATS_TOKEN=token))
            assert code == 0 and out.strip() == "ok", err
            code, _, err = await run_cli("disrouter", "ask", "--nats", server.url, "hi", env=clean_env(DISROUTER_NATS_TOKEN="nope"))
            one_line_error(code, err, "refused the credentials")
            with pytest.raises(MeshAuthError, match="does not offer TLS"):  # a CA demands TLS: no plaintext fallback
                await connect(server.url, auth=NatsAuth(token=token, ca=str(make_pki(tmp_path).ca)))
        finally:
            await responder.close()


async def test_an_nkey_seed_file_and_a_creds_file(tmp_path: Path) -> None:
    nkeys = pytest.importorskip("nkeys")
    user, stranger = keypair(nkeys.PREFIX_BYTE_USER), keypair(nkeys.PREFIX_BYTE_USER)
    (tmp_path / "user.nk").write_bytes(user.seed)
    (tmp_path / "stranger.nk").write_bytes(stranger.seed)
    (tmp_path / "nkey.conf").write_text(f"authorization {{ users: [ {{ nkey: {user.public_key.decode()} }} ] }}\n")
    with NatsServer(config=tmp_path / "nkey.conf") as server:
        responder = await serve_answers(server.url, NatsAuth(nkey=str(tmp_path / "user.nk")))
        try:
            code, out, err = await run_cli("disrouter", "ask", "--nats", server.url, "--nats-nkey", str(tmp_path / "user.nk"), "hi")
            assert code == 0 and out.strip() == "ok", err
            code, _, err = await run_cli("disrouter", "ask", "--nats", server.url, "--nats-nkey", str(tmp_path / "stranger.nk"), "hi")
            one_line_error(code, err, "refused the credentials")
        finally:
            await responder.close()

    # Operator mode: the user's JWT (in the creds file) carries its permissions.
    operator, account, system = keypair(nkeys.PREFIX_BYTE_OPERATOR), keypair(nkeys.PREFIX_BYTE_ACCOUNT), keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}
    accounts = {kp.public_key.decode(): signed_jwt(operator, kp, {"type": "account", "limits": limits}) for kp in (account, system)}
    (tmp_path / "operator.conf").write_text(
        f"operator: {signed_jwt(operator, operator, {'type': 'operator'})}\nsystem_account: {system.public_key.decode()}\n"
        f"resolver: MEMORY\nresolver_preload: {{ {', '.join(f'{k}: {v}' for k, v in accounts.items())} }}\n"
    )
    allowed = {"allow": [SUBJECTS.ingress, "_INBOX.>"]}
    user_jwt = signed_jwt(account, user, {"type": "user", "pub": allowed, "sub": allowed, "subs": -1, "data": -1, "payload": -1})
    (tmp_path / "user.creds").write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    with NatsServer(config=tmp_path / "operator.conf") as server:
        creds = NatsAuth(creds=str(tmp_path / "user.creds"))
        responder = await serve_answers(server.url, creds)
        try:
            code, out, err = await run_cli("disrouter", "ask", "--nats", server.url, "hi", env=clean_env(DISROUTER_NATS_CREDS=str(tmp_path / "user.creds")))
            assert code == 0 and out.strip() == "ok", err
            with pytest.raises(MeshPermissionError):
                await responder.request(SUBJECTS.node("n"), b"", timeout=5)
            with pytest.raises(MeshAuthError):
                await connect(server.url, auth=NatsAuth(nkey=str(tmp_path / "user.nk")))  # a seed alone is not enough
        finally:
            await responder.close()


# --- TLS ---------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    """A CA, a server and a client certificate it signed (for 127.0.0.1), and an unrelated CA."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name: str, signer: tuple | None = None, usage=None) -> tuple:  # noqa: ANN001
        """(key, certificate): self-signed CA when ``signer`` (key, cert) is None."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer_key, signer_cert = signer or (key, None)
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(signer_cert.subject if signer_cert else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=signer is None, path_length=None), critical=True)
        )
        if signer is None:
            builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        else:
            san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).add_extension(san, critical=False)
        return key, builder.sign(signer_key, hashes.SHA256())

    def write(stem: str, key, cert) -> tuple[Path, Path]:  # noqa: ANN001
        pem, key_file = folder / f"{stem}.pem", folder / f"{stem}.key"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return pem, key_file

    ca = issue("disrouter test CA")
    server = write("server", *issue("nats", ca, ExtendedKeyUsageOID.SERVER_AUTH))
    client = write("client", *issue("disrouter-node", ca, ExtendedKeyUsageOID.CLIENT_AUTH))
    return Pki(write("ca", *ca)[0], write("other-ca", *issue("someone else's CA"))[0], *server, *client)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def tls_server(pki: Pki, folder: Path, verify_clients: bool) -> NatsServer:
    extra = f'  ca_file: "{pki.ca}"\n  verify: true\n' if verify_clients else ""
    (folder / "tls.conf").write_text(f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n{extra}  timeout: 2\n}}\n')
    return NatsServer(config=folder / "tls.conf")


async def test_tls_with_the_right_ca_works_and_any_other_fails_in_one_line(pki: Pki, tmp_path: Path) -> None:
    with tls_server(pki, tmp_path, verify_clients=False) as server:
        responder = await serve_answers(server.url, NatsAuth(ca=str(pki.ca)))
        try:
            code, out, err = await run_cli("disrouter", "ask", "--nats", server.url.replace("nats://", "tls://"), "--nats-ca", str(pki.ca), "hi")
            assert code == 0 and out.strip() == "ok", err
            code, _, err = await run_cli("disrouter", "ask", "--nats", server.url, "--nats-ca", str(pki.other_ca), "hi")
            one_line_error(code, err, "TLS certificate not trusted")
            code, _, err = await run_cli("disrouter-node", "--backend", "instant", "--model", "y", "--cost", "1", "--nats", server.url, "--nats-ca", str(pki.other_ca))
            one_line_error(code, err, "TLS certificate not trusted")
            with pytest.raises(MeshAuthError, match="TLS certificate not trusted"):  # the system CAs do not know this one
                await connect(server.url.replace("nats://", "tls://"), auth=NatsAuth())
        finally:
            await responder.close()


async def test_mutual_tls_needs_the_client_certificate(pki: Pki, tmp_path: Path) -> None:
    mutual = NatsAuth(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    with tls_server(pki, tmp_path, verify_clients=True) as server:
        responder = await serve_answers(server.url, mutual)
        try:
            async with await MeshClient.connect(server.url, auth=mutual) as client:
                assert (await client.ask("hi", timeout=5)).text == "ok"
            with pytest.raises(MeshAuthError):
                await connect(server.url, auth=NatsAuth(ca=str(pki.ca)))
            code, _, err = await run_cli("disrouter", "ask", "--nats", server.url, "--nats-ca", str(pki.ca), "--nats-cert", str(pki.client_cert), "hi")
            one_line_error(code, err, "--nats-cert and --nats-key")
        finally:
            await responder.close()


async def dropping_server(pki: Pki | None, how: str):  # noqa: ANN201 - asyncio.Server
    """A fake NATS server that sends INFO, upgrades to TLS when given a PKI, then drops the socket:
    how a server that refuses the client's certificate may end the session (``how``: "close"
    for a clean close, "reset" for a TCP reset)."""
    import socket
    import ssl
    import struct

    context = None
    if pki is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.10.0", "proto": 1, "max_payload": 1048576, "tls_required": context is not None}
        writer.write(f"INFO {json.dumps(info)}\r\n".encode())
        await writer.drain()
        if context is not None:
            await writer.start_tls(context)
        if how == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort() if how == "reset" else writer.close()

    return await asyncio.start_server(session, "127.0.0.1", 0)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_tls_session_the_server_drops_is_a_refused_handshake(pki: Pki, how: str) -> None:
    """However the socket closes after the TLS upgrade (EOF, broken pipe, reset), it is an auth error."""
    if not hasattr(asyncio.StreamWriter, "start_tls"):
        pytest.skip("the fake server needs StreamWriter.start_tls (Python 3.11+)")
    server = await dropping_server(pki, how)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(MeshAuthError, match="--nats-cert and --nats-key"):
            await asyncio.wait_for(connect(f"nats://127.0.0.1:{port}", auth=NatsAuth(ca=str(pki.ca))), 30)
    finally:
        server.close()


async def test_a_plain_session_the_server_drops_is_a_connection_error() -> None:
    server = await dropping_server(None, "close")
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(MeshConnectionError) as caught:
            await asyncio.wait_for(connect(f"nats://127.0.0.1:{port}", auth=NatsAuth()), 30)
    finally:
        server.close()
    assert not isinstance(caught.value, MeshAuthError)
