"""The ``syndicate`` command feels like a tool: quick to start (``--help`` and a mistyped option load no
aiohttp, Redis or jsonschema; a command loads no jsonschema format checker), every command listed on one
line, and one line with a non-zero exit for a busy port, a port out of range, a wrong feeds folder and
a second purge. Also: the dashboard's sign-in form answers 400, not 500, for a form it cannot read."""

from __future__ import annotations

import socket
import subprocess
import sys

import orjson
import pytest
from conftest import ADMIN_TOKEN, ROOT, SEED_V1, cli_env, free_port, make_partner, run_cli

from server.domain.articles import article_id_for_uri

SEED_ID = article_id_for_uri(orjson.loads(SEED_V1.read_bytes())["uri"])
HEAVY = ("aiohttp", "redis", "jsonschema", "rfc3987_syntax", "server.runtime", "server.http")
# What a command that validates nothing must not import: jsonschema's format checkers build a grammar
# at import time (rfc3987-syntax), seconds on a small machine.
FORMAT_CHECKERS = ("jsonschema", "rfc3987_syntax")

PROBE = """
import sys, orjson
from server.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print("\\nMODULES " + orjson.dumps(sorted(sys.modules)).decode())
sys.exit(code or 0)
"""


def probe(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI in a fresh interpreter; its result and every module it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    modules = set(orjson.loads(result.stdout.rsplit("MODULES ", 1)[1]))
    return result, modules


def loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_help_loads_nothing_heavy_and_lists_every_command_on_one_line():
    from server.cli.main import _parser

    result, modules = probe("--help", env=cli_env())
    assert result.returncode == 0, result.stderr
    assert loaded(modules, HEAVY) == []
    subcommands = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    lines = result.stdout.splitlines()
    for name in subcommands.choices:
        listed = [line for line in lines if line.split()[:1] == [name]]
        assert len(listed) == 1 and len(listed[0].split()) > 1, (name, result.stdout)  # name and help, one line
    assert len(subcommands.choices) == 9


def test_a_bad_option_is_one_line_without_loading_anything_heavy():
    result, modules = probe("serve", "--port", "70000", env=cli_env())
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "70000" in result.stderr and "65535" in result.stderr
    assert loaded(modules, HEAVY) == []
    for given in ("", "18_438"):  # a blank --port served on 8080, whatever SYNDICATE_PORT said
        result, _modules = probe("serve", "--port", given, env=cli_env(SYNDICATE_PORT="18440"))
        assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, (given, result.stderr)


def test_commands_load_no_format_checkers(redis_url, tmp_path):
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    for args in (("partner", "list"), ("status",), ("deliveries",), ("show", SEED_ID)):
        result, modules = probe(*args, env=env)
        assert loaded(modules, FORMAT_CHECKERS) == [], (args, loaded(modules, FORMAT_CHECKERS))
    # import validates documents: only then are the checkers loaded
    result, modules = probe("import", str(SEED_V1), env=env)
    assert result.returncode == 0, result.stderr
    assert "jsonschema" in modules


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "serving on" not in result.stdout, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("syndicate")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_serve_on_a_busy_port_is_one_line_before_anything_starts(redis_url, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
        line = one_line_failure(run_cli("serve", "--port", str(port), env=env, timeout=30))
    assert f"127.0.0.1:{port}" in line and "--port" in line
    assert not (tmp_path / "var" / "redis").exists()  # refused before anything started


@pytest.mark.parametrize("port", ["70000", "0", "-1", "http"])
def test_serve_refuses_a_port_out_of_range(tmp_path, port):
    env = cli_env(SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    result = run_cli("serve", f"--port={port}", env=env, timeout=30)
    assert result.returncode == 2
    line = one_line_failure(result)
    assert "--port" in line


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_wrong_feeds_folder_stops_the_server(redis_url, tmp_path, folder):
    feeds = tmp_path / folder
    if folder == "empty":
        feeds.mkdir()
        (feeds / "notes.txt").write_text("no feed here")
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"), SYNDICATE_FEEDS_DIR=str(feeds),
                  SYNDICATE_PORT=str(free_port()))
    line = one_line_failure(run_cli("serve", env=env, timeout=60))
    assert "SYNDICATE_FEEDS_DIR" in line and str(feeds) in line
    assert ("does not exist" if folder == "missing" else "no feed definitions") in line


def test_a_second_purge_keeps_the_first_record(redis_url, tmp_path):
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    assert run_cli("import", str(SEED_V1), env=env).returncode == 0
    first = run_cli("purge", SEED_ID, "--reason", "court order 2024/17", "--yes", env=env)
    assert first.returncode == 0, first.stderr
    purged_at = orjson.loads(run_cli("show", SEED_ID, env=env).stdout)["purgedAt"]
    second = run_cli("purge", SEED_ID, "--reason", "another reason", "--yes", env=env)
    line = one_line_failure(second)
    assert second.returncode == 1 and "already purged" in line and "court order 2024/17" in line
    record = orjson.loads(run_cli("show", SEED_ID, env=env).stdout)
    assert record["purgedAt"] == purged_at and record["purgeReason"] == "court order 2024/17"


def test_the_cli_checks_an_endpoint_as_the_api_does(redis_url, tmp_path):
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"),
                  SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8")
    assert run_cli("partner", "add", "atomonly", "--feeds", "latest", "--formats", "atom", env=env).returncode == 0
    short = run_cli("partner", "endpoint", "add", "atomonly", "http://127.0.0.1:9/hook", "--format", "atom",
                    "--secret", "short", env=env)
    assert "secret must be a string of 16 to 199 bytes" in one_line_failure(short)
    unknown = run_cli("partner", "endpoint", "add", "atomonly", "http://127.0.0.1:9/hook", "--format", "xml",
                      "--secret", "a-long-shared-secret-0123", env=env)
    assert "format must be one of newsml, ninjs, atom" in one_line_failure(unknown)
    added = run_cli("partner", "endpoint", "add", "atomonly", "http://127.0.0.1:9/hook", "--format", "atom",
                    "--secret", "a-long-shared-secret-0123", env=env)
    assert added.returncode == 0 and "endpoint wh-" in added.stdout, added.stderr


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data", b"token=x"),  # no boundary
    ("multipart/form-data; boundary=xyz", b"not a multipart body at all"),
    ("application/x-www-form-urlencoded; charset=no-such-charset", b"token=x"),
    ("application/x-www-form-urlencoded", b"token=\xff\xfe"),  # not UTF-8
    ("multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="token"\r\nContent-Type: text/plain; charset=nope\r\n\r\nx\r\n--b--\r\n'),
])
async def test_a_sign_in_form_that_cannot_be_read_is_400(client, content_type, body):
    response = await client.post("/ops/login", data=body, headers={"Content-Type": content_type},
                                 allow_redirects=False)
    assert response.status == 400, await response.text()
    assert response.content_type == "application/problem+json"
    assert (await response.json())["status"] == 400
    good = await client.post("/ops/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert good.status == 303


async def test_status_fits_the_terminal_and_never_cuts_a_name(redis_url, tmp_path):
    """`syndicate status` on a narrow terminal (COLUMNS=60): no line is wider, and a long partner name
    is folded onto more lines, never cut with an ellipsis."""
    name = "a-partner-with-a-rather-long-name-indeed"
    await make_partner(redis_url, name=name)
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"), COLUMNS="60")
    result = run_cli("status", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 60, result.stdout
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    first_column = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        first_column.append(line.split()[0] if line[:2].strip() else "")
    assert "".join(first_column) == name, result.stdout
