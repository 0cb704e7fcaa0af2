"""The ``syndicate`` CLI as a real process, and settings parsed from the environment."""

from __future__ import annotations

import shutil

import orjson
import pytest
from conftest import ROOT, SEED_V1, SEED_V2, cli_env, free_port, run_cli

from server.core.redis_address import DirectRedis, SentinelRedis
from server.core.settings import Settings, SettingsError
from server.domain.articles import article_id_for_uri

SEED_ID = article_id_for_uri(orjson.loads(SEED_V1.read_bytes())["uri"])


@pytest.fixture
def articles_dir(tmp_path):
    folder = tmp_path / "articles"
    folder.mkdir()
    # Named so that alphabetical order is the wrong order: import must sort by versionCreated.
    shutil.copy(SEED_V2, folder / "a-correction.json")
    shutil.copy(SEED_V1, folder / "b-first.json")
    return folder


def test_import_applies_files_in_version_order(redis_url, articles_dir, tmp_path):
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    result = run_cli("import", str(articles_dir), "--signal", "correction", env=env)
    assert result.returncode == 0, result.stderr
    assert "created 1, revised 1, unchanged 0, rejected 0" in result.stdout

    again = run_cli("import", str(articles_dir), env=env)
    assert again.returncode == 0
    assert "created 0, revised 0, unchanged 2, rejected 0" in again.stdout

    shown = run_cli("show", SEED_ID, env=env)
    assert shown.returncode == 0, shown.stderr
    record = orjson.loads(shown.stdout)
    assert record["version"] == 2
    assert [v["signal"] for v in record["versions"]] == [None, "correction"]


def test_import_reports_rejected_files_and_fails(redis_url, articles_dir, tmp_path):
    (articles_dir / "broken.json").write_text('{"uri": "https://x.example/a", "flavour": 1}')
    (articles_dir / "not-json.json").write_text("<xml/>")
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    result = run_cli("import", str(articles_dir), env=env)
    assert result.returncode == 1
    assert "created 1, revised 1, unchanged 0, rejected 2" in result.stdout
    assert "broken.json: /flavour" in result.stderr
    assert "not-json.json: Malformed JSON" in result.stderr


def test_purge_from_the_cli(redis_url, tmp_path):
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    assert run_cli("import", str(SEED_V1), env=env).returncode == 0
    refused = run_cli("purge", SEED_ID, "--reason", "court order", env=env, input="")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = run_cli("purge", SEED_ID, "--reason", "court order", "--yes", env=env)
    assert purged.returncode == 0, purged.stderr
    record = orjson.loads(run_cli("show", SEED_ID, env=env).stdout)
    assert record["purgedAt"] and record["pubStatus"] == "canceled"
    assert [v["hasBody"] for v in record["versions"]] == [False, False]


def test_cli_uses_an_embedded_redis_without_redis_url(tmp_path):
    env = cli_env(SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    assert run_cli("import", str(SEED_V1), env=env).returncode == 0
    shown = run_cli("show", SEED_ID, env=env)  # a new embedded Redis on the same data: still there
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["version"] == 1


@pytest.mark.parametrize(("args", "env_extra", "needle"), [
    (["show", "NOT-AN-ID"], {}, "is not an article id"),
    (["show", article_id_for_uri("https://never.example/")], {}, "No article"),
    (["import", "/no/such/path"], {}, "no such file"),
    (["serve"], {"SYNDICATE_PORT": "eighty"}, "SYNDICATE_PORT"),
    (["serve"], {"SYNDICATE_REDIS_SERVER": "no-such-redis-binary"}, "apt-get install redis-server"),
])
def test_cli_errors_are_one_line_and_non_zero(redis_url, tmp_path, args, env_extra, needle):
    env = cli_env(SYNDICATE_DATA_DIR=str(tmp_path / "var"), SYNDICATE_PORT=str(free_port()))
    env.update(env_extra)
    if "SYNDICATE_REDIS_SERVER" not in env_extra:
        env["REDIS_URL"] = redis_url
    result = run_cli(*args, env=env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("syndicate:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_settings_defaults():
    settings = Settings.from_env({})
    assert settings.redis_address is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.base_url == "http://127.0.0.1:8080"
    assert settings.max_body_bytes == 2 * 1024 * 1024
    assert settings.retention_days == 90


def test_the_fast_path_is_on_unless_turned_off():
    assert Settings.from_env({}).fast_path is True
    assert Settings.from_env({"SYNDICATE_FAST_PATH": "on"}).fast_path is True
    assert Settings.from_env({"SYNDICATE_FAST_PATH": "off"}).fast_path is False
    assert Settings.from_env({"SYNDICATE_FAST_PATH": "OFF"}).fast_path is False


def test_settings_parse_a_sentinel_url():
    settings = Settings.from_env({
        "REDIS_URL": "rediss+sentinel://app:s%40cret@10.0.0.1:26380,[::1],sentinel-c/news/2?sentinel_password=sp",
        "SYNDICATE_CACHE_REDIS_URL": "redis+sentinel://h1,h2/cache",
        "SYNDICATE_MIN_REPLICAS_ACKED": "2", "SYNDICATE_REPLICA_ACK_TIMEOUT_MS": "250",
    })
    assert settings.redis_address == SentinelRedis(
        sentinels=(("10.0.0.1", 26380), ("::1", 26379), ("sentinel-c", 26379)), service="news", db=2, tls=True,
        username="app", password="s@cret", sentinel_password="sp")
    assert "s@cret" not in repr(settings) and "sp" not in repr(settings.redis_address)
    assert settings.cache_redis_address == SentinelRedis(sentinels=(("h1", 26379), ("h2", 26379)), service="cache")
    assert (settings.min_replicas_acked, settings.replica_ack_timeout_seconds) == (2, 0.25)
    assert Settings.from_env({"REDIS_URL": "redis://r:6379/1"}).redis_address == DirectRedis("redis://r:6379/1")
    assert Settings.from_env({}).min_replicas_acked is None  # auto: 1 with replicas, 0 for a single Redis
    with_files = Settings.from_env({"REDIS_URL": "rediss+sentinel://h1/news?ssl_ca_certs=/etc/hostname"
                                                 "&ssl_certfile=/etc/hostname&ssl_keyfile=/etc/hostname"})
    assert with_files.redis_address.tls_files == (  # type: ignore[union-attr]
        ("ssl_ca_certs", "/etc/hostname"), ("ssl_certfile", "/etc/hostname"), ("ssl_keyfile", "/etc/hostname"))


def test_a_bad_sentinel_url_never_shows_its_password():
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"REDIS_URL": "redis+sentinel://:hunter2@a:1,b:x/svc"})
    assert "hunter2" not in str(error.value)


def test_settings_parse_tokens():
    settings = Settings.from_env({
        "SYNDICATE_PUBLISHER_TOKENS": "desk:aaaaaaaaaaaaaaaa1, bbbbbbbbbbbbbbbb2",
        "SYNDICATE_BASE_URL": "https://feeds.example.com/",
    })
    assert [(t.name, t.token) for t in settings.publisher_tokens] == [
        ("desk", "aaaaaaaaaaaaaaaa1"), ("publisher2", "bbbbbbbbbbbbbbbb2")]
    assert settings.base_url == "https://feeds.example.com"


@pytest.mark.parametrize(("name", "value"), [
    ("SYNDICATE_PORT", "70000"),
    ("SYNDICATE_PORT", "http"),
    ("SYNDICATE_PORT", "18_438"),  # int() takes it
    ("SYNDICATE_PORT", "\u0661\u0668\u0664\u0663"),  # Arabic-Indic digits: int() takes them too
    ("SYNDICATE_MAX_BODY_BYTES", "1e6"),
    ("SYNDICATE_MAX_BODY_BYTES", "-1"),
    ("SYNDICATE_RETENTION_DAYS", "nan"),
    ("REDIS_URL", "http://localhost:6379"),
    ("REDIS_URL", "redis+sentinel://a:26379,b:26379"),
    ("REDIS_URL", "redis+sentinel://a:99999/mymaster"),
    ("REDIS_URL", "redis+sentinel://a:1,b:2/mymaster/zero"),
    ("REDIS_URL", "redis+sentinel://a:1/mymaster?sentinel_pasword=x"),
    ("REDIS_URL", "redis+sentinel://a:1/mymaster?ssl_ca_certs=/etc/hostname"),  # TLS files without TLS
    ("REDIS_URL", "rediss+sentinel://a:1/mymaster?ssl_certfile=/etc/hostname"),  # a certificate without its key
    ("REDIS_URL", "rediss+sentinel://a:1/mymaster?ssl_ca_certs=/nonexistent/ca.pem"),
    ("SYNDICATE_CACHE_REDIS_URL", "redis+sentinel://:secret@/mymaster"),
    ("SYNDICATE_MIN_REPLICAS_ACKED", "-1"),
    ("SYNDICATE_REPLICA_ACK_TIMEOUT_MS", "5000"),
    ("SYNDICATE_BASE_URL", "feeds.example.com"),
    ("SYNDICATE_PUBLISHER_TOKENS", "desk:short"),
    ("SYNDICATE_PUBLISHER_TOKENS", "a:aaaaaaaaaaaaaaaaaa,a:bbbbbbbbbbbbbbbbbbb"),
    ("SYNDICATE_ADMIN_TOKEN", "tiny"),
    ("SYNDICATE_LOG_LEVEL", "LOUD"),
    ("SYNDICATE_FAST_PATH", "sometimes"),
])
def test_bad_settings_name_the_variable(name, value):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    message = str(error.value)
    assert message.startswith(name + ":") and "\n" not in message


def test_serve_prints_no_token_unless_it_is_the_demo(redis_url, tmp_path):
    """A server's output is kept (docker logs, journald): only `serve --demo` prints the tokens."""
    import subprocess
    import sys
    import time

    from conftest import ADMIN_TOKEN, PUBLISHER_TOKEN, ROOT

    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path), SYNDICATE_PORT=str(free_port()),
                  SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN,
                  SYNDICATE_WORKERS="OFF")
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, deadline = "", time.monotonic() + 30
        while "articles: curl" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            output += line
    finally:
        process.terminate()
        rest, _ = process.communicate(timeout=20)
    output += rest or ""
    assert "syndicate serving on" in output, output
    assert PUBLISHER_TOKEN not in output and ADMIN_TOKEN not in output
    assert "SYNDICATE_ADMIN_TOKEN" in output  # where the tokens are


def test_every_setting_is_in_the_settings_table():
    """docs/operations.md's settings table names every variable server/core/settings.py reads."""
    import re

    code = (ROOT / "server" / "core" / "settings.py").read_text(encoding="utf-8")
    table = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").partition("## Settings")[2]
    read = set(re.findall(r'"((?:SYNDICATE|REDIS)_[A-Z0-9_]+)"', code))
    assert read and sorted(n for n in read if f"| `{n}`" not in table) == []
