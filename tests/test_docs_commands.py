"""Every shell command in README.md and docs/*.md works when followed in order, against a fresh server
started as ``make run`` starts it. The convention (what runs, the placeholders, the skip-list) is at the
top of docs/testing.md; in short:

- every fenced ```` ```sh ```` block of a page runs, in order, in one ``bash`` (``set -eo pipefail``),
  from a scratch folder that links the repository's ``.venv``, ``examples`` and ``feeds`` (so ``var/``
  is the test server's own data folder), against ``syndicate serve --demo`` with loopback push allowed;
- ``127.0.0.1:8080`` is rewritten to the test server's port and ``127.0.0.1:9000`` to a free port for
  the example subscriber;
- each docs page first runs the README's credentials block (the first one of its tour), so it may use
  ``TOKEN``, ``ADMIN`` and ``KEY``;
- ``curl`` fails the page on an HTTP status of 400 or more, unless the command prints the status itself
  (``-w '%{http_code}'``) and ends with the status expected as a comment (``# 401``), which is checked;
- no other shell block kind is allowed (``bash``, ``shell``, ``console``): a block either runs or is in
  :data:`SKIP`, with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, free_port

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SHELL_KINDS = {"bash", "shell", "console", "zsh", "shell-session"}

# (page, first line of the block) -> why the block is not run. Keep it small; each entry is reviewed.
SKIP: dict[tuple[str, str], str] = {
    ("README.md", "make run"): "the Quick start itself: this test starts the server as make run does",
    ("README.md", "SYNDICATE_PORT=9090 make run"): "starts another server; the test runs its own on a free port "
                                                   "and data folder the same way",
    ("docs/testing.md", "make test"): "runs the whole suite, this test included",
    ("docs/testing.md", "SYNDICATE_FAST_PATH=off .venv/bin/python -m pytest -q tests/test_feeds_http.py "
                        "tests/test_partners.py tests/test_fast_path.py tests/test_metrics_and_logs.py"):
        "part of make test; minutes of tests inside a test",
    ("docs/testing.md", ".venv/bin/python -m pytest -q -x tests/test_openapi.py"): "a test run inside a test",
    ("docs/benchmarks.md", "make bench"): "minutes of load on the machine, with nginx and wrk",
    ("docs/benchmarks.md", ".venv/bin/python scripts/bench.py --only push --write-docs"):
        "rewrites docs/benchmarks.md and loads the machine",
    ("docs/operations.md", "docker compose up -d --build"): "needs Docker and builds an image",
    ("docs/deployment.md", "syndicate serve --processes 2"):
        "starts a supervisor and two servers for good; tests/test_processes.py runs exactly that",
    ("docs/deployment.md", 'kill -TERM "$supervisor_pid"'):
        "stops that supervisor; tests/test_processes.py sends it SIGTERM and checks the drain",
    ("docs/operations.md", ".venv/bin/syndicate serve --host 0.0.0.0 --port 9090"):
        "a second server and a worker, which run until stopped",
    ("docs/operations.md", ".venv/bin/syndicate retry 3f9a1c0e5b7d2468ace013579bdf2468   # send a given-up delivery again"):
        "needs given-up deliveries; tests/test_push_retry.py and tests/test_ops.py retry real ones",
}


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def shell_blocks(page: Path) -> list[str]:
    blocks = []
    for kind, body in FENCE.findall(page.read_text(encoding="utf-8")):
        kind = kind.strip().split(" ")[0]
        assert kind not in SHELL_KINDS, f"{page_name(page)}: a ```{kind} block; shell commands go in ```sh blocks"
        if kind == "sh":
            blocks.append(body)
    return blocks


def first_line(block: str) -> str:
    return block.strip().splitlines()[0].strip() if block.strip() else ""


def expect_statuses(block: str) -> str:
    """``curl ... -w '%{http_code}\\n' ... # 304`` -> the command piped into ``_expect 304``."""
    lines, out, command = block.splitlines(), [], []
    for line in lines:
        command.append(line)
        if line.rstrip().endswith("\\"):
            continue
        logical = "\n".join(command)
        match = re.search(r"\s#\s*(\d{3})\b.*$", command[-1])
        if "%{http_code}" in logical and match:
            command[-1] = command[-1][:match.start()] + f" | _expect {match.group(1)}"
        out.extend(command)
        command = []
    out.extend(command)
    return "\n".join(out)


PRELUDE = r"""
set -eo pipefail
curl() {  # a status of 400 or more fails, unless the command prints the status itself (-w)
  case " $* " in *" -w "*) command curl -sS "$@" ;; *) command curl -sS --fail-with-body "$@" ;; esac
}
_expect() { local got; got=$(cat); echo "$got"; [ "$got" = "$1" ] || { echo "expected HTTP $1, got $got" >&2; return 1; }; }
"""


def script_for(page: Path, server_port: int, subscriber_port: int) -> str:
    parts = [PRELUDE]
    if page.name != "README.md":
        parts.append("echo '::README credentials'\n" + credentials_block())
    for number, block in enumerate(shell_blocks(page), 1):
        if (page_name(page), first_line(block)) in SKIP:
            continue
        parts.append(f"echo {shlex.quote(f'::block {number}: {first_line(block)[:60]}')}\n" + expect_statuses(block))
    text = "\n".join(parts)
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{server_port}").replace(
        "127.0.0.1:9000", f"127.0.0.1:{subscriber_port}")


def credentials_block() -> str:
    return next(b for b in shell_blocks(ROOT / "README.md") if "TOKEN=$(" in b)


def scratch_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    for name in (".venv", "examples", "feeds"):
        (folder / name).symlink_to(ROOT / name)
    return folder


# Settings a page says its server runs with (in its text, next to the commands).
SERVER_SETTINGS = {
    "docs/superdesk.md": {"SYNDICATE_SUPERDESK_SECRETS": "newsroom:a-shared-secret-of-the-tour-0123"},
}


def start_server(folder: Path, port: int, settings: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = cli_env(SYNDICATE_PORT=str(port), SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8,::1/128", **(settings or {}))
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--demo"], cwd=folder, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, deadline = "", time.monotonic() + 60
    while "demo partner key" not in output:
        line = process.stdout.readline() if process.stdout else ""
        if (not line and process.poll() is not None) or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start:\n{output}")
        output += line
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_the_commands_of_the_page_work_in_order(page, tmp_path):
    if not any((page_name(page), first_line(b)) not in SKIP for b in shell_blocks(page)):
        pytest.skip(f"{page_name(page)} has no command to run")
    folder = scratch_folder(tmp_path)
    server_port, subscriber_port = free_port(), free_port()
    script = script_for(page, server_port, subscriber_port)
    (tmp_path / "page.sh").write_text(script)
    server = start_server(folder, server_port, SERVER_SETTINGS.get(page_name(page)))
    try:
        result = subprocess.run(["bash", str(tmp_path / "page.sh")], cwd=folder, capture_output=True, text=True,
                                timeout=300, env={**cli_env(), "COLUMNS": "120"}, start_new_session=True)
    finally:
        pid_file = folder / "subscriber.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
        stop(server)
    ran = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert result.returncode == 0, (f"{page_name(page)}: failed in {ran[-1] if ran else 'the prelude'}\n"
                                    f"--- stdout (end)\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")


def test_every_skip_is_still_a_block_of_its_page():
    """The skip-list stays small and current: an entry whose block is gone must be removed."""
    present = {(page_name(page), first_line(block)) for page in PAGES for block in shell_blocks(page)}
    assert set(SKIP) <= present, sorted(set(SKIP) - present)


def test_every_page_setting_is_said_on_its_page():
    for page, settings in SERVER_SETTINGS.items():
        text = (ROOT / page).read_text(encoding="utf-8")
        assert all(f"{name}={value}" in text for name, value in settings.items()), page


def test_the_scaling_benchmark_is_a_part_of_make_bench():
    """docs/scaling.md's figures come from `make bench` (part `scaling`), which is not a test: its
    command line is checked to exist."""
    assert "$(BIN)/python scripts/bench.py" in (ROOT / "Makefile").read_text()
    result = subprocess.run([sys.executable, "scripts/bench.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "scaling" in result.stdout
    assert "<!-- scaling:start -->" in (ROOT / "docs" / "scaling.md").read_text()
