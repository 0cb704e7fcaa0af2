"""The API description against a live server, by schemathesis: every operation of
``schemas/openapi.yaml``, with every check schemathesis has (``--checks all``: no 5xx, only documented
statuses, media types, headers and bodies, schema-valid requests accepted and schema-violating ones
refused, a missing required header refused, unsupported methods, ignored authentication, ...).

The server is a real ``syndicate serve`` on its own ``redis-server``, with the seed article published,
a partner entitled to everything (its key for the feed and item routes), the publisher and admin
tokens, a Superdesk secret, and a dashboard session. Schemathesis runs as a process (its CLI), in its
four phases (the description's examples, coverage, fuzzing, stateful), deterministically, with a
bounded number of examples per operation; its NDJSON report is read back and every finding is listed
with the request that caused it.

A finding is excused only by an entry of ``EXCUSES``: a refusal no static schema can express (it
depends on the server's configuration, the clock, DNS or the stored state), narrowed to the operation,
the check and the answer, whose words the description must say. Nothing else is excused.

Two runs: the first with the failed-key throttle and the hub's per-address limit set high (else
schemathesis's wrong and missing credentials use up the minute's budget within seconds, and every later
request of the run is a 429, which tests nothing); the second against a server with the throttle as deployed, once it has refused
this address, so every authenticated operation answers its 429, which must be documented too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import http_helpers as http
import pytest
import yaml
from conftest import (
    ADMIN_TOKEN,
    PUBLISHER_TOKEN,
    ROOT,
    SEED_V1,
    cli_env,
    free_port,
    start_redis,
    stop_processes,
)
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SPEC_PATH = ROOT / "schemas" / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
SPEC_TEXT = " ".join(SPEC_PATH.read_text(encoding="utf-8").split())
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
OPERATIONS = {f"{method.upper()} {path}" for path, item in SPEC["paths"].items() for method in item
              if method in HTTP_METHODS}
EXAMPLES = int(os.environ.get("SYNDICATE_SCHEMATHESIS_EXAMPLES", "10"))  # per operation and phase
# Deterministic by default (the same cases every run); SYNDICATE_SCHEMATHESIS_SEED=<n> explores instead.
SEED = os.environ.get("SYNDICATE_SCHEMATHESIS_SEED")
GENERATION = ["--seed", SEED] if SEED else ["--generation-deterministic"]
SUPERDESK_SECRET = "a-superdesk-secret-0123456789"
# The partner whose key schemathesis reads with: not the description's example partner (acme), which
# the run changes, disables and takes keys from like any other.
READER = "schemathesis-reader"
pytestmark = pytest.mark.timeout(300)


# ----- the live server -------------------------------------------------------------------------------


@dataclass
class Live:
    url: str
    port: int
    partner_key: str
    ops_session: str


def _serve(directory: Path, redis_url: str, **settings: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(directory), SYNDICATE_PORT=str(port),
                  SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN,
                  SYNDICATE_SUPERDESK_SECRETS=f"newsroom:{SUPERDESK_SECRET}", SYNDICATE_WORKERS="OFF", **settings)
    directory.mkdir(parents=True)
    with open(directory / "server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while http.get(port, "/readyz")[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_processes([process])
            raise AssertionError(f"the server did not start: {(directory / 'server.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return process, port


def _prepare(port: int) -> Live:
    """The seed article, a partner entitled to everything (with room in its rate limit for the whole
    run), and a dashboard session."""
    publisher = {"Authorization": f"Bearer {PUBLISHER_TOKEN}", "Content-Type": "application/json"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    assert http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), publisher)[0] == 201
    status, body = http.request(port, "POST", "/api/partners", json.dumps(
        {"name": READER, "feeds": ["*"], "formats": ["*"], "rate_limit": 1_000_000}).encode(), admin)
    assert status == 201, body
    connection = HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/ops/login", body=f"token={ADMIN_TOKEN}",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie") or ""
    finally:
        connection.close()
    assert response.status == 303 and cookie.startswith("syn_ops="), (response.status, cookie)
    return Live(f"http://127.0.0.1:{port}", port, json.loads(body)["key"], cookie.split(";")[0].split("=", 1)[1])


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, Live]]:
    directory = tmp_path_factory.mktemp("schemathesis")
    started: list[subprocess.Popen] = []
    try:
        redis, redis_port = start_redis(directory / "redis-lenient")
        started.append(redis)
        lenient, lenient_port = _serve(directory / "lenient", f"redis://127.0.0.1:{redis_port}/0",
                                       SYNDICATE_FAILED_KEYS_PER_ADDRESS="1000000",
                                       SYNDICATE_FAILED_KEYS_PER_KEY="1000000",
                                       SYNDICATE_FAILED_TOKENS_PER_ADDRESS="1000000",
                                       SYNDICATE_HUB_REQUESTS_PER_ADDRESS="1000000")
        started.append(lenient)
        redis, redis_port = start_redis(directory / "redis-deployed")
        started.append(redis)
        deployed, deployed_port = _serve(directory / "deployed", f"redis://127.0.0.1:{redis_port}/0")
        started.append(deployed)
        yield {"lenient": _prepare(lenient_port), "deployed": _prepare(deployed_port)}
    finally:
        stop_processes(started[::-1], grace=20)


# ----- running schemathesis --------------------------------------------------------------------------


def _config(live: Live) -> str:
    """schemathesis.toml: each security scheme of the description with its credential."""
    return "\n".join([
        "[auth.openapi.bearerAuth]", f'bearer = "{PUBLISHER_TOKEN}"',
        "[auth.openapi.adminAuth]", f'bearer = "{ADMIN_TOKEN}"',
        "[auth.openapi.partnerKeyBearer]", f'bearer = "{live.partner_key}"',
        "[auth.openapi.partnerKeyHeader]", f'api_key = "{live.partner_key}"',
        "[auth.openapi.partnerKeyQuery]", f'api_key = "{live.partner_key}"',
        "[auth.openapi.opsSession]", f'api_key = "{live.ops_session}"',
        "",
    ])


def run_schemathesis(live: Live, workdir: Path, *options: str) -> list[dict[str, Any]]:
    """Run schemathesis against ``live``; the events of its NDJSON report."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "schemathesis.toml").write_text(_config(live), encoding="utf-8")
    report = workdir / "report.ndjson"
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(workdir / "schemathesis.toml"),
               "run", str(SPEC_PATH), "--url", live.url, "--checks", "all", *GENERATION,
               "--workers", "1", "--continue-on-failure", "--no-color",
               # With security parameters generated (the default), fuzzing makes up the Authorization
               # header itself, so the configured credentials reach few requests; ignored_auth still
               # sends missing and wrong ones.
               "--generation-with-security-parameters", "false",
               "--request-timeout", "10", "--report", "ndjson", "--report-ndjson-path", str(report), *options]
    # In a folder of its own, so its cache (.schemathesis/) lands there and not in the repository.
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "NO_COLOR": "1"})
    (workdir / "output.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    assert result.returncode in (0, 1) and report.exists(), f"schemathesis failed to run:\n{result.stdout[-3000:]}" \
                                                            f"\n{result.stderr[-3000:]}"
    return [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----- findings ----------------------------------------------------------------------------------------


@dataclass
class Finding:
    phase: str
    operation: str  # "POST /api/partners"
    check: str  # schemathesis's check name
    code: str  # its failure code (ST202, ...)
    message: str
    case: dict[str, Any]
    status: int | None
    response_headers: dict[str, list[str]] = field(default_factory=dict)
    response_body: bytes = b""
    server_port: int = 0  # of the server the run was against

    @property
    def problem(self) -> dict[str, Any]:
        try:
            value = json.loads(self.response_body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def pointers(self) -> set[str]:
        return {e.get("pointer", "") for e in self.problem.get("errors", []) if isinstance(e, dict)}

    def component_modes(self) -> set[str]:
        components = (self.case.get("meta") or {}).get("components") or {}
        return {c.get("mode") for c in components.values() if isinstance(c, dict)}

    def describe(self) -> str:
        request = {k: self.case.get(k) for k in ("path_parameters", "query", "headers", "body") if self.case.get(k)}
        body = self.response_body.decode("utf-8", "replace")
        return (f"  {self.phase}: {(self.message.strip() or self.check).splitlines()[0]}\n"
                f"    request: {self.case.get('method')} {self.case.get('path')} "
                f"{json.dumps(request, ensure_ascii=True)[:400]}\n"
                f"    answer: {self.status} {body[:300]}")


def _body(content: dict[str, Any] | None) -> bytes:
    if not content:
        return b""
    if "$base64" in content:
        return base64.b64decode(content["$base64"])
    return str(content.get("string", "")).encode()


def findings_of(events: list[dict[str, Any]], port: int) -> tuple[list[Finding], Counter[str]]:
    """Every failed check of every test case, and how many test cases each operation had."""
    found: list[Finding] = []
    cases: Counter[str] = Counter()
    for event in events:
        scenario = event.get("ScenarioFinished")
        if scenario is None:
            continue
        recorder = scenario["recorder"]
        for case_id, recorded in recorder.get("cases", {}).items():
            case = recorded["value"]
            operation = _operation(case)
            cases[operation] += 1
            interaction = recorder.get("interactions", {}).get(case_id) or {}
            response = interaction.get("response") or {}
            for check in recorder.get("checks", {}).get(case_id, []):
                if check["status"] != "failure":
                    continue
                failure = check["failure_info"]["failure"]
                found.append(Finding(scenario["phase"], operation, check["name"], failure["code"],
                                     failure["message"], case, response.get("status_code"),
                                     response.get("headers") or {}, _body(response.get("content")), port))
    return found, cases


def _operation(case: dict[str, Any]) -> str:
    return f"{case['method'].upper()} {case['path']}"


def errors_of(events: list[dict[str, Any]]) -> list[str]:
    """Errors schemathesis met (not failed checks): a schema it could not read, a request that failed."""
    return [json.dumps(event)[:1000] for event in events if any("Error" in name for name in event)]


# ----- what a static schema cannot say -----------------------------------------------------------------


def _ninjs_validators() -> list[Draft202012Validator]:
    """The linked ninjs profiles (``schemas/ninjs-profile-{3,2,1}.json``) over the vendored IPTC schemas,
    built here from the files alone."""
    schemas = ROOT / "schemas"

    def load(name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((schemas / name).read_text(encoding="utf-8"))
        return loaded

    official = ("ninjs-schema_3.1.json", "ninjs-schema_2.2.json", "ninjs-schema_1.4.json")
    registry = Registry().with_resources([
        ("https://geojson.org/schema/GeoJSON.json", Resource.from_contents(load("iptc/GeoJSON-schema.json"))),
        *((f"http://www.iptc.org/std/ninjs/{name}", Resource.from_contents(load(f"iptc/{name}"))) for name in official),
    ])
    return [Draft202012Validator(load(f"ninjs-profile-{v}.json"), registry=registry,
                                 format_checker=Draft202012Validator.FORMAT_CHECKER) for v in "321"]


NINJS_PROFILES = _ninjs_validators()


def _fails_every_ninjs_profile(finding: Finding) -> bool:
    body = finding.case.get("body")
    return (finding.status in (400, 422) and finding.problem.get("type", "").endswith("/invalid-document")
            and isinstance(body, dict) and not any(v.is_valid(body) for v in NINJS_PROFILES))


def _problem(status: int, slug: str | None = None, pointer: str | None = None) -> Callable[[Finding], bool]:
    def applies(finding: Finding) -> bool:
        return (finding.status == status and (slug is None or finding.problem.get("type", "").endswith(f"/{slug}"))
                and (pointer is None or finding.pointers == {pointer}))
    return applies


def _plain_text(status: int, pattern: str) -> Callable[[Finding], bool]:
    def applies(finding: Finding) -> bool:
        return finding.status == status and re.match(pattern, finding.response_body.decode("utf-8", "replace"))
    return applies


def _to_login(finding: Finding) -> bool:
    location = {k.lower(): v for k, v in finding.response_headers.items()}.get("location", [])
    return (finding.status == 303 and location == ["/ops/login"]
            and "syn_ops" not in (finding.case.get("cookies") or {}))


def _killed_article(finding: Finding) -> bool:
    """The article in the path is killed: a kill (DELETE) is a revision, its history stays readable."""
    article_id = (finding.case.get("path_parameters") or {}).get("id")
    status, body = http.get(finding.server_port, f"/api/articles/{article_id}",
                            {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    return finding.status == 200 and status == 200 and json.loads(body)["kind"] == "kill"


def _not_a_valid_case(finding: Finding) -> bool:
    # schemathesis 4.32's coverage phase builds "positive" cases (a valid body, say) whose optional
    # If-Match header it generated negative ("0": not the pattern's quoted digits), and marks the
    # header's component so; such a request is not schema-valid, whatever the case is called.
    return "negative" in finding.component_modes()


# Every operation that takes a bearer token asks the failed-key throttle before anything else. (A
# valid partner key is never refused: the feed and item routes answer 429 to a failed key only.)
def _schemes(operation: str) -> set[str]:
    method, path = operation.split()
    requirements = SPEC["paths"][path][method.lower()].get("security", SPEC["security"])
    return {name for requirement in requirements for name in requirement}


THROTTLED = frozenset(op for op in OPERATIONS if _schemes(op) & {"bearerAuth", "adminAuth"})
KEYED = frozenset(op for op in OPERATIONS if _schemes(op) & {"partnerKeyBearer", "partnerKeyHeader", "partnerKeyQuery"})


@dataclass(frozen=True)
class Excuse:
    check: str
    operations: frozenset[str]
    applies: Callable[[Finding], bool]
    why: str
    documented_as: str | None = None  # words schemas/openapi.yaml must say (the refusal is documented)

    def covers(self, finding: Finding) -> bool:
        return finding.check == self.check and finding.operation in self.operations and self.applies(finding)


ARTICLE_WRITES = frozenset({"POST /api/articles", "PUT /api/articles/{id}"})
PARTNER_WRITES = frozenset({"POST /api/partners", "PATCH /api/partners/{name}"})
ACCEPTANCE = "positive_data_acceptance"
REJECTION = "negative_data_rejection"
EXCUSES = [
    Excuse(ACCEPTANCE, ARTICLE_WRITES, _fails_every_ninjs_profile,
           "The request body's schema sums up a ninjs document; the complete rules are the linked JSON "
           "Schema profiles (not $ref'ed: they refer to the IPTC schemas by their web ids). Excused only "
           "when the document fails every profile, checked here against the profile files.",
           "The complete rules are the JSON Schemas `ninjs-profile-3.json` and `ninjs-profile-2.json`"),
    Excuse(ACCEPTANCE, frozenset({"PUT /api/articles/{id}"}), _problem(422, "uri-mismatch", "/uri"),
           "The uri must be the one the id in the path derives from (a hash): a relation between the path "
           "and the body.", "must be the one the id derives from (else 422 `uri-mismatch`)"),
    Excuse(ACCEPTANCE, ARTICLE_WRITES | {"DELETE /api/articles/{id}"}, _not_a_valid_case,
           "A case schemathesis calls positive although one of its parts was generated negative."),
    Excuse(ACCEPTANCE, ARTICLE_WRITES | {"DELETE /api/articles/{id}"}, _problem(412, "precondition-failed"),
           "If-Match must name the article's current version: the stored state.",
           "The request fails with 412 if the article is at another version"),
    Excuse("use_after_free", frozenset({"GET /api/articles/{id}", "GET /api/articles/{id}/versions",
                                        "GET /api/articles/{id}/versions/{version}"}), _killed_article,
           "DELETE kills an article: a revision of its own, the article and its history stay.",
           "A kill is a new revision with pubStatus `canceled` whose document is a tombstone without a body; `kind` "
           "is `kill`. History stays."),
    Excuse(ACCEPTANCE, frozenset({"GET /items/{id}/newsml"}), _problem(400, "bad-request"),
           "The highest version is the article's latest: the stored state.", "a number above the latest is 400"),
    Excuse("ignored_auth", THROTTLED | KEYED, _problem(429, "too-many-failures"),
           "Wrong credentials from an address the failed-key throttle counts are refused with its 429.",
           "a further failed key is 429 (`too-many-failures`) instead of 401"),
    Excuse(ACCEPTANCE, PARTNER_WRITES, _problem(422, pointer="/feeds"),
           "Which feeds exist is configuration (feeds/*.toml).", "is not one of the server's feeds is 422"),
    Excuse(ACCEPTANCE, PARTNER_WRITES | {"POST /api/partners/{name}/keys"}, _problem(422, pointer="/expires_at"),
           "An expiry must be in the future: it depends on the clock.", "in the future"),
    Excuse(ACCEPTANCE, frozenset({"POST /api/partners/{name}/endpoints"}),
           _problem(422, "unsafe-destination", "/url"),
           "Whether a host resolves, and to what, is DNS.", "a host that does not resolve, or one that resolves to"),
    Excuse(ACCEPTANCE, frozenset({"POST /hub"}), _plain_text(
        400, r"hub\.topic (must be a feed of this hub|'.*' is not a feed URL of this hub|names no feed of this hub)"),
           "A topic is a feed URL of this server: its base URL and its feeds are configuration.",
           "Which base URL and feeds there are is configuration"),
    Excuse(ACCEPTANCE, frozenset({"POST /hub"}), _plain_text(400, r"hub\.callback: "),
           "Whether a callback's host resolves, and to what, is DNS.", "a callback that is not an absolute http(s) URL"),
    Excuse(ACCEPTANCE, frozenset({"POST /hub"}), _plain_text(400, r"hub\.secret must be less than 200 bytes"),
           "A length in bytes: JSON Schema counts characters.", "Less than 200 bytes (in UTF-8"),
    Excuse(REJECTION, frozenset(op for op in OPERATIONS if op.split()[1].startswith("/ops")) - {
        "GET /ops/login", "POST /ops/login"}, _to_login,
           "The dashboard is for a browser: a request without the session cookie is sent to the sign-in "
           "page (303), which is the refusal.", "Without a valid session: 303 to `/ops/login`"),
]


def summary(findings: list[Finding]) -> str:
    by_kind: dict[tuple[str, str], list[Finding]] = {}
    for finding in findings:
        by_kind.setdefault((finding.operation, f"{finding.code} {finding.check}"), []).append(finding)
    lines = []
    for (operation, check), group in sorted(by_kind.items()):
        lines.append(f"{operation}: {check} ({len(group)} case{'s' if len(group) > 1 else ''})")
        lines.extend(f.describe() for f in group[:2])
    return "\n".join(lines)


def test_every_excuse_is_said_in_the_description():
    for excuse in EXCUSES:
        assert excuse.operations <= OPERATIONS, excuse.operations - OPERATIONS
        if excuse.documented_as is not None:
            assert " ".join(excuse.documented_as.split()) in SPEC_TEXT, excuse.documented_as


def check_run(events: list[dict[str, Any]], live: Live, where: Path) -> Counter[str]:
    """Fail on a schemathesis error, an operation left untested or an unexcused finding; the number of
    test cases of each operation."""
    assert not errors_of(events), "\n".join(errors_of(events))
    findings, cases = findings_of(events, live.port)
    untested = sorted(OPERATIONS - set(cases))
    assert not untested, f"operations schemathesis did not test: {untested}"
    unexcused = [f for f in findings if not any(e.covers(f) for e in EXCUSES)]
    assert not unexcused, (f"{len(unexcused)} findings of schemathesis against schemas/openapi.yaml "
                           f"(report: {where}):\n{summary(unexcused)}")
    return cases


def statuses_of(events: list[dict[str, Any]]) -> dict[str, set[int]]:
    """The statuses each operation answered in a run."""
    seen: dict[str, set[int]] = {}
    for event in events:
        recorder = (event.get("ScenarioFinished") or {}).get("recorder") or {}
        for case_id, recorded in recorder.get("cases", {}).items():
            response = (recorder.get("interactions", {}).get(case_id) or {}).get("response") or {}
            if "status_code" in response:
                seen.setdefault(_operation(recorded["value"]), set()).add(response["status_code"])
    return seen


def test_the_description_holds_against_a_live_server(servers, tmp_path):
    live = servers["lenient"]
    events = run_schemathesis(live, tmp_path / "run", "--max-examples", str(EXAMPLES))
    check_run(events, live, tmp_path / "run")
    answered = statuses_of(events)
    # The credentials reached the server: every operation answered something else than a refusal of them
    # (but a Superdesk push, signed with an HMAC of its body, which schemathesis cannot make:
    # tests/test_superdesk.py sends signed ones).
    refused = sorted(op for op, statuses in answered.items()
                     if statuses <= {401, 403, 429} and op != "POST /api/superdesk/items")
    assert not refused, f"operations that only refused schemathesis's credentials: {refused}"


def test_the_throttles_answers_are_documented_too(servers, tmp_path):
    """The server as deployed, once this address has sent too many wrong tokens and keys: every
    operation that takes a bearer token answers 429, as documented (with Retry-After, as a problem),
    and a failed partner key is 429 too while a valid one is still served."""
    live = servers["deployed"]
    left = 60 - time.time() % 60  # the throttle counts per one-minute window: the run must fit in one
    if left < 30:
        time.sleep(left + 0.1)
    for n in range(12):
        http.get(live.port, "/api/articles", {"Authorization": f"Bearer wrong-token-{n}"})
    for n in range(22):
        http.get(live.port, "/api/me/status", {"X-API-Key": f"syn_{n:08x}_{'x' * 43}"})
    assert http.get(live.port, "/api/articles", {"Authorization": f"Bearer {PUBLISHER_TOKEN}"})[0] == 429
    assert http.get(live.port, "/api/me/status", {"X-API-Key": f"syn_{0:08x}_{'x' * 43}"})[0] == 429
    assert http.get(live.port, "/api/me/status", {"X-API-Key": live.partner_key})[0] == 200
    events = run_schemathesis(live, tmp_path / "run", "--phases", "fuzzing", "--mode", "positive",
                              "--max-examples", "3")
    check_run(events, live, tmp_path / "run")
    answered = statuses_of(events)
    unthrottled = sorted(op for op in THROTTLED if 429 not in answered.get(op, set()))
    assert not unthrottled, f"operations that never answered 429 while the address was throttled: {unthrottled}"
