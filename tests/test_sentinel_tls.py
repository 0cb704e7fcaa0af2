"""Sentinel over TLS, for real: a primary, a replica and three sentinels that speak only TLS (``port 0``,
``tls-port``), require client certificates (``tls-auth-clients yes``) and replicate over TLS, with a CA
made by the test. The server reaches them by ``rediss+sentinel://...?ssl_ca_certs=...&ssl_certfile=...
&ssl_keyfile=...``, stores and serves an article, follows a ``SENTINEL FAILOVER`` and stores another
on the new primary; the CLI takes the same URL, and one without the CA fails in one line.
Every process is stopped by its pid."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_sync
from conftest import AUTH, SEED_V1, cli_env, free_port, run_cli, stop_processes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from push_helpers import wait_for
from sentinel_helpers import DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, SERVICE, wait_until

from server.core.redis_address import parse_redis_address
from server.http.app import create_app

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}


@dataclasses.dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path  # for 127.0.0.1, used by every server, sentinel and client
    key: Path


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syndicate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = Certificates(directory / "ca.crt", directory / "redis.crt", directory / "redis.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


def tls_lines(certs: Certificates) -> list[str]:
    return ["port 0", f"tls-cert-file {certs.cert}", f"tls-key-file {certs.key}", f"tls-ca-cert-file {certs.ca}",
            "tls-auth-clients yes", "tls-replication yes", "bind 127.0.0.1"]


def client(port: int, certs: Certificates) -> redis_sync.Redis:
    return redis_sync.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certs.ca), ssl_certfile=str(certs.cert),
                            ssl_keyfile=str(certs.key), decode_responses=True, socket_timeout=2)


def start(directory: Path, lines: list[str], sentinel: bool = False) -> tuple[subprocess.Popen, int]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    assert port != 6379
    conf = directory / "redis.conf"
    conf.write_text("\n".join([f"tls-port {port}", f"dir {directory}", f"logfile {directory / 'log'}", *lines, ""]))
    command = [shutil.which("redis-server") or "redis-server", str(conf), *(["--sentinel"] if sentinel else [])]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory) -> Iterator[tuple[Certificates, int, list[int]]]:
    """One cluster for the module (a quorum that knows itself takes a while to form)."""
    tmp_path = tmp_path_factory.mktemp("tls-cluster")
    certs = make_certificates(tmp_path / "tls")
    started: list[subprocess.Popen] = []
    try:
        durable = ["appendonly yes", "appendfsync always", "save ''"]
        primary, primary_port = start(tmp_path / "primary", [*tls_lines(certs), *durable])
        started.append(primary)
        wait_until(lambda: client(primary_port, certs).ping(), 10, "the primary over TLS")
        replica, replica_port = start(tmp_path / "replica",
                                      [*tls_lines(certs), *durable, f"replicaof 127.0.0.1 {primary_port}"])
        started.append(replica)
        wait_until(lambda: client(replica_port, certs).info("replication")["master_link_status"] == "up",
                   15, "the replica to sync over TLS")
        sentinels = []
        for index in range(3):
            process, port = start(tmp_path / f"sentinel{index}", [
                *tls_lines(certs), f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}"], sentinel=True)
            started.append(process)
            sentinels.append(port)

        def known() -> bool:
            return all(int(client(p, certs).sentinel_master(SERVICE)["num-other-sentinels"]) == 2
                       and client(p, certs).sentinel_slaves(SERVICE) for p in sentinels)

        wait_until(known, 20, "the sentinels to know each other and the replica, over TLS")
        yield certs, primary_port, sentinels
    finally:
        stop_processes(started)


def sentinel_url(sentinels: list[int], certs: Certificates | None) -> str:
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinels)
    files = f"?ssl_ca_certs={certs.ca}&ssl_certfile={certs.cert}&ssl_keyfile={certs.key}" if certs else ""
    return f"rediss+sentinel://{hosts}/{SERVICE}/0{files}"


def article(seed: dict, n: int) -> dict:
    return {**seed, "uri": f"urn:test:tls:{n}", "headlines": [{"value": f"Over TLS {n}"}]}


async def test_the_server_reaches_a_tls_sentinel_service_and_follows_its_failover(aiohttp_client, settings,
                                                                                 tls_cluster, seed_v1):
    certs, primary_port, sentinels = tls_cluster
    address = parse_redis_address(sentinel_url(sentinels, certs))
    app = await aiohttp_client(create_app(dataclasses.replace(settings, redis_address=address,
                                                              cache_redis_address=address)))
    stored = await app.post("/api/articles", data=orjson.dumps(article(seed_v1, 1)), headers=JSON_HEADERS)
    assert stored.status == 201, await stored.text()
    feed = await app.get("/feeds/headlines/json")
    assert feed.status == 200 and "Over TLS 1" in await feed.text()
    assert client(primary_port, certs).hget("syn:articles:by-uri", "urn:test:tls:1")

    client(sentinels[0], certs).execute_command("SENTINEL", "FAILOVER", SERVICE)
    wait_until(lambda: int(client(sentinels[0], certs).sentinel_get_master_addr_by_name(SERVICE)[1]) != primary_port,
               20, "the replica promoted")
    new_primary = int(client(sentinels[0], certs).sentinel_get_master_addr_by_name(SERVICE)[1])

    async def stored_again():
        response = await app.post("/api/articles", data=orjson.dumps(article(seed_v1, 2)), headers=JSON_HEADERS)
        assert response.status in (200, 201, 503), (response.status, await response.text())
        return response.status in (200, 201)

    await wait_for(stored_again, timeout=20, message="a write on the new primary")
    assert client(new_primary, certs).hget("syn:articles:by-uri", "urn:test:tls:2")
    assert client(new_primary, certs).hget("syn:articles:by-uri", "urn:test:tls:1")  # replicated before the switch
    await wait_for(lambda: app.get("/feeds/headlines/json"), timeout=5, message="a feed")
    assert "Over TLS 2" in await (await app.get("/feeds/headlines/json")).text()


def test_the_cli_over_tls_and_a_url_without_the_ca_is_one_line(tls_cluster):
    """The CLI takes the same URL: with the CA it imports the seed onto the primary; without it (the
    servers' certificates come from a CA the system does not trust) it fails in one line, non-zero, and
    stores nothing."""
    certs, _primary, sentinels = tls_cluster
    refused = run_cli("import", str(SEED_V1), env=cli_env(REDIS_URL=sentinel_url(sentinels, None)))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    [line] = [line for line in refused.stderr.splitlines() if line.startswith("syndicate")]
    assert "ssl_ca_certs" in line and len(line) < 400, line
    primary = int(client(sentinels[0], certs).sentinel_get_master_addr_by_name(SERVICE)[1])
    uri = orjson.loads(SEED_V1.read_bytes())["uri"]
    assert not client(primary, certs).hget("syn:articles:by-uri", uri)
    imported = run_cli("import", str(SEED_V1), env=cli_env(REDIS_URL=sentinel_url(sentinels, certs)))
    assert imported.returncode == 0, imported.stderr
    assert client(primary, certs).hget("syn:articles:by-uri", uri)
