"""``scripts/check-compose.py`` (run by ``make lint``): docker-compose.yml passes, and each kind of mistake
it exists to catch, made on a copy of the file, is reported."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT

SPEC = importlib.util.spec_from_file_location("check_compose", ROOT / "scripts" / "check-compose.py")
assert SPEC is not None and SPEC.loader is not None
check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(check)
COMPOSE = (ROOT / "docker-compose.yml").read_text()


def test_the_compose_file_passes_as_make_lint_runs_it():
    result = subprocess.run([sys.executable, "scripts/check-compose.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert check.problems() == []


@pytest.mark.parametrize(("old", "new", "reported"), [
    ("    restart: unless-stopped\n    ports:", "    restrat: unless-stopped\n    ports:", "schema: services/balancer"),
    ("SYNDICATE_BASE_URL:?set it", "SYNDICATE_BASE_URL:-http://127.0.0.1:8080", "starts without SYNDICATE_BASE_URL"),
    ("SYNDICATE_TRUSTED_PROXIES: 10.89.0.0/24", "SYNDICATE_TRUSTED_PROXIES: 0.0.0.0/0", "wider than the balancer"),
    ("SYNDICATE_TRUSTED_PROXIES: 10.89.0.0/24", "SYNDICATE_TRUSTED_PROXIES: 10.89.0.128/25",
     "does not hold the balancer's address"),
    ('SYNDICATE_WORKERS: "OFF"', 'SYNDICATE_WORKER: "OFF"', "SYNDICATE_WORKER is not a setting"),
    ('SYNDICATE_WORKERS: "OFF"', 'SYNDICATE_WORKERS: "NEVER"', "SYNDICATE_WORKERS: expected one of"),
    ('"--maxmemory", "${SYNDICATE_CACHE_MAXMEMORY:-512mb}",', "", "must be bounded"),
    ('"--appendfsync", "always", "--save", "",\n              "--maxmemory-policy", "volatile-lru", "--replica-announce-ip", "redis-primary"',
     '"--appendfsync", "everysec", "--save", "",\n              "--maxmemory-policy", "volatile-lru", "--replica-announce-ip", "redis-primary"',
     "redis-primary: a store Redis must run with"),
    ("      redis-primary:\n        condition: service_healthy\n    healthcheck: *redis-health",
     "      redis-main:\n        condition: service_healthy\n    healthcheck: *redis-health", "names no service 'redis-main'"),
    ("./deploy/nginx.conf:/etc/nginx/nginx.conf:ro", "./deploy/haproxy.cfg:/etc/nginx/nginx.conf:ro",
     "expected one service mounting deploy/nginx.conf"),
    ("urlopen('http://127.0.0.1:8080/readyz'", "urlopen('http://127.0.0.1:8080/healthz'", "health check is not /readyz"),
])
def test_each_mistake_is_reported(old, new, reported):
    assert old in COMPOSE
    found = check.problems(COMPOSE.replace(old, new, 1))
    assert any(reported in line for line in found), found
