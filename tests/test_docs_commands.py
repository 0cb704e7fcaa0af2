"""Every shell command docs/deployment.md and docs/scaling.md show is one a test runs: each is listed
here with the test that runs it (and what in that test runs it), so a command added to the docs fails
here until a test exercises it. The benchmark the figures of docs/scaling.md come from is not a test;
its command line (``scripts/bench.py --only scaling``) is checked to exist."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

DOCS = ("docs/deployment.md", "docs/scaling.md")
RUN_BY = {  # command -> (the test file that runs it, what in it runs it)
    "syndicate serve --processes 2": ("tests/test_processes.py", '"-m", "server.cli", command, "--processes", str(processes)'),
    'kill -TERM "$supervisor_pid"': ("tests/test_processes.py", "supervisor.send_signal(signal.SIGTERM)"),
}


def shell_commands() -> list[str]:
    commands = []
    for name in DOCS:
        for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", (ROOT / name).read_text(), re.S | re.M):
            commands += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def test_every_shell_command_in_the_docs_is_run_by_a_test():
    assert sorted(set(shell_commands())) == sorted(RUN_BY)
    for command, (test_file, evidence) in RUN_BY.items():
        assert evidence in (ROOT / test_file).read_text(), (command, test_file)


def test_the_scaling_benchmark_is_a_part_of_make_bench():
    assert "$(BIN)/python scripts/bench.py" in (ROOT / "Makefile").read_text()
    result = subprocess.run([sys.executable, "scripts/bench.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "scaling" in result.stdout
    assert "<!-- scaling:start -->" in (ROOT / "docs" / "scaling.md").read_text()
