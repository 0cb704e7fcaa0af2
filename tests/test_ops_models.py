"""The ops read models (``server/ops/models.py``, ``server/domain/delivery.py``) without Redis: each
``to_json`` is the API's JSON, every JSON answer validates against its schema in
``schemas/openapi.yaml``, and the enums hold the values the description lists."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from server.domain.articles import CORRECTION, KILL, ChangeKind, PubStatus
from server.domain.delivery import ArticleReceipt, DestinationKind, PartnerStatus, PollSummary, ReceiptState
from server.domain.propagation import Delivery
from server.ops.models import (
    DeliveryAttempt,
    DeliveryFilter,
    DeliveryReport,
    FailedDelivery,
    FailedDestination,
    Lag,
    Page,
    PartnerHealth,
    PartnerRow,
    PropagationItem,
    PropagationReceipt,
    PropagationReport,
    QueueSummary,
    RetryResult,
    StatusOverview,
)
from server.push.destinations import WEBHOOK, WEBSUB

SPEC_PATH = Path(__file__).resolve().parents[1] / "schemas" / "openapi.yaml"
AT = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
LATER = datetime(2024, 5, 1, 10, 5, 30, 250000, tzinfo=UTC)
ARTICLE = "abcdefghijklmnop"
DELIVERY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def check(spec: dict[str, Any], schema: str, value: dict[str, Any]) -> None:
    """``value`` (through orjson, as the API sends it) is valid against ``#/components/schemas/<schema>``."""
    registry = Registry().with_resource("spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    validator = Draft202012Validator({"$ref": f"spec#/components/schemas/{schema}"}, registry=registry)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(orjson.loads(orjson.dumps(value)))]
    assert not errors, errors


def receipt(received: bool) -> ArticleReceipt:
    return ArticleReceipt(
        id=ARTICLE, uri="urn:example:1", version=3, kind=ChangeKind.CORRECTION, pub_status=PubStatus.USABLE,
        received=received, received_version=3 if received else 2, received_at=LATER if received else None,
        outstanding_since=None if received else AT, outstanding_seconds=None if received else 330.25)


def partner_row() -> PartnerRow:
    return PartnerRow(
        partner="acme", active=True, state=PartnerHealth.BEHIND, last_poll=AT, last_push=None,
        lag=Lag(revisions=1, seconds=330.25), outstanding=1, error_rate=0.5, failing_endpoints=("wh-1",),
        failing_subscriptions=(), queue_depth=2, oldest_pending_seconds=12.5)


def propagation_item() -> PropagationItem:
    return PropagationItem(
        id=ARTICLE, uri="urn:example:1", kind=ChangeKind.KILL, version=4, ingested_at=AT, headline="Headline",
        partners=(PropagationReceipt("beta", False, None, 3, 60.0),
                  PropagationReceipt("acme", True, LATER, 4, None)),
        outstanding=1)


def attempt_fields() -> dict[str, str]:
    """A stream entry as the push worker writes it (every value text)."""
    return {"at": "2024-05-01T10:00:00.123456Z", "destination": "wh-1", "kind": "webhook", "partner": "acme",
            "article": ARTICLE, "version": "3", "attempt": "2", "status": "503", "ok": "0", "latencyMs": "12.5",
            "error": "HTTP 503", "delivery": DELIVERY}


def failure_record() -> dict[str, Any]:
    return {"delivery": DELIVERY, "kind": "websub", "destination": "ws-1", "partner": None,
            "url": "https://example.com/callback", "article": ARTICLE, "version": 3, "attempts": 5,
            "firstAttemptAt": "2024-05-01T09:00:00Z", "lastAttemptAt": "2024-05-01T10:00:00.5Z",
            "lastStatus": None, "lastError": "TimeoutError: timed out"}


# --- a partner's status --------------------------------------------------------------------------------


def test_poll_summary_to_json():
    assert PollSummary(polls=4, not_modified=3, not_modified_ratio=0.75).to_json() == {
        "polls": 4, "notModified": 3, "notModifiedRatio": 0.75}
    assert PollSummary(0, 0, None).to_json()["notModifiedRatio"] is None


def test_article_receipt_to_json():
    assert receipt(received=False).to_json() == {
        "id": ARTICLE, "uri": "urn:example:1", "version": 3, "kind": "correction", "pubStatus": "usable",
        "received": False, "receivedVersion": 2, "receivedAt": None, "outstandingSince": "2024-05-01T10:00:00Z",
        "outstandingSeconds": 330.25, "delivery": "content"}  # what it is sent (the propagation rule)
    done = receipt(received=True).to_json()
    assert done["receivedAt"] == "2024-05-01T10:05:30.250000Z" and done["outstandingSince"] is None
    assert receipt(True).state == ReceiptState.RECEIVED and receipt(False).state == ReceiptState.OUTSTANDING


def test_partner_status_to_json(spec):
    status = PartnerStatus(partner="acme", active=True, last_poll=AT, last_push=None,
                           last_hour=PollSummary(2, 1, 0.5), articles=(receipt(False), receipt(True)), outstanding=1)
    body = status.to_json()
    assert list(body) == ["partner", "active", "lastPoll", "lastPush", "lastHour", "articles", "outstanding"]
    assert body["lastPoll"] == "2024-05-01T10:00:00Z" and body["lastPush"] is None
    assert body["lastHour"] == PollSummary(2, 1, 0.5).to_json()
    assert body["articles"] == [receipt(False).to_json(), receipt(True).to_json()]
    check(spec, "PartnerStatus", body)


# --- GET /api/status -------------------------------------------------------------------------------------


def test_lag_to_json():
    assert Lag(revisions=0, seconds=0).to_json() == {"revisions": 0, "seconds": 0}


def test_partner_row_to_json(spec):
    body = partner_row().to_json()
    assert body == {
        "partner": "acme", "active": True, "state": "behind", "lastPoll": "2024-05-01T10:00:00Z", "lastPush": None,
        "lag": {"revisions": 1, "seconds": 330.25}, "outstanding": 1, "errorRate": 0.5,
        "failingEndpoints": ["wh-1"], "failingSubscriptions": [], "queueDepth": 2, "oldestPendingSeconds": 12.5}
    assert type(body["state"]) is str
    check(spec, "PartnerHealth", body)


def test_queue_summary_to_json(spec):
    body = QueueSummary(depth=3, due=2, in_flight=1, oldest_pending_seconds=None, failed=0, subscriptions=4,
                        endpoints=5).to_json()
    assert body == {"depth": 3, "due": 2, "inFlight": 1, "oldestPendingSeconds": None, "failed": 0,
                    "subscriptions": 4, "endpoints": 5}
    check(spec, "QueueSummary", body)


def test_status_overview_to_json(spec):
    queue = QueueSummary(0, 0, 0, None, 0, 0, 0)
    overview = StatusOverview(generated_at=LATER, partners=(partner_row(),), queue=queue)
    body = overview.to_json()
    assert body == {"generatedAt": "2024-05-01T10:05:30.250000Z", "partners": [partner_row().to_json()],
                    "queue": queue.to_json()}
    assert overview.count(PartnerHealth.BEHIND) == 1 and overview.count(PartnerHealth.HEALTHY) == 0
    check(spec, "OpsStatus", body)


# --- GET /api/propagation --------------------------------------------------------------------------------


def test_propagation_receipt_to_json():
    assert PropagationReceipt("acme", True, LATER, 4, None).to_json() == {
        "partner": "acme", "received": True, "receivedAt": "2024-05-01T10:05:30.250000Z", "receivedVersion": 4,
        "outstandingSeconds": None, "delivery": "content"}
    outstanding = PropagationReceipt("beta", False, None, None, 60.0, Delivery.WITHDRAWAL)
    assert outstanding.to_json() == {"partner": "beta", "received": False, "receivedAt": None,
                                     "receivedVersion": None, "outstandingSeconds": 60.0, "delivery": "withdrawal"}
    assert outstanding.state == ReceiptState.OUTSTANDING


def test_propagation_item_to_json(spec):
    item = propagation_item()
    body = item.to_json()
    assert body == {"id": ARTICLE, "uri": "urn:example:1", "kind": "kill", "version": 4,
                    "ingestedAt": "2024-05-01T10:00:00Z", "headline": "Headline",
                    "partners": [row.to_json() for row in item.partners], "outstanding": 1, "required": 0}
    check(spec, "PropagationItem", body)


def test_propagation_report_to_json(spec):
    report = PropagationReport(since=AT, generated_at=LATER, items=(propagation_item(),), outstanding=1)
    body = report.to_json()
    assert body == {"from": "2024-05-01T10:00:00Z", "generatedAt": "2024-05-01T10:05:30.250000Z",
                    "items": [propagation_item().to_json()], "outstanding": 1, "totalItems": 0,
                    "outstandingItems": 0}
    check(spec, "Propagation", body)
    empty = PropagationReport(since=AT, generated_at=AT, items=(), outstanding=0).to_json()
    assert empty["items"] == [] and empty["outstanding"] == 0


# --- GET /api/deliveries and the retry ---------------------------------------------------------------------


def test_delivery_attempt_from_fields_to_json(spec):
    body = DeliveryAttempt.from_fields(attempt_fields()).to_json()
    assert body == {"at": "2024-05-01T10:00:00.123456Z", "destination": "wh-1", "kind": "webhook",
                    "partner": "acme", "article": ARTICLE, "version": 3, "attempt": 2, "status": 503, "ok": False,
                    "latencyMs": 12.5, "error": "HTTP 503", "delivery": DELIVERY}
    assert list(body) == list(attempt_fields())  # the order the worker writes them in
    check(spec, "DeliveryAttempt", body)
    acknowledged = DeliveryAttempt.from_fields({**attempt_fields(), "ok": "1", "status": "200", "error": ""})
    assert acknowledged.ok is True and acknowledged.status == 200
    no_answer = DeliveryAttempt.from_fields({**attempt_fields(), "status": "0", "partner": ""})
    assert no_answer.status is None and no_answer.to_json()["partner"] == ""


def test_failed_delivery_from_record_to_json(spec):
    failure = FailedDelivery.from_record(failure_record())
    assert failure.kind == DestinationKind.WEBSUB and failure.partner is None
    assert failure.to_json() == failure_record()  # the stored record, member for member
    check(spec, "FailedDelivery", failure.to_json())


def test_delivery_report_to_json(spec):
    attempt = DeliveryAttempt.from_fields(attempt_fields())
    failure = FailedDelivery.from_record(failure_record())
    body = DeliveryReport(attempts=(attempt,), failed=(failure,)).to_json()
    assert body == {"attempts": [attempt.to_json()], "failed": [failure.to_json()]}
    check(spec, "DeliveryList", body)
    assert DeliveryReport((), ()).to_json() == {"attempts": [], "failed": []}


def test_retry_result_to_json(spec):
    body = RetryResult(delivery=DELIVERY, destination="wh-1", article=ARTICLE, version=4).to_json()
    assert body == {"delivery": DELIVERY, "destination": "wh-1", "article": ARTICLE, "version": 4,
                    "requeued": True}
    check(spec, "RetryResult", body)


# --- the models and the enums ----------------------------------------------------------------------------


def test_the_models_are_frozen():
    row = partner_row()
    with pytest.raises(AttributeError):
        row.outstanding = 2  # type: ignore[misc]
    assert not hasattr(row, "__dict__")  # slots


def test_enumerations_match_the_description(spec):
    schemas = spec["components"]["schemas"]
    assert schemas["PartnerHealth"]["properties"]["state"]["enum"] == list(PartnerHealth)
    assert schemas["DeliveryAttempt"]["properties"]["kind"]["enum"] == sorted(DestinationKind)
    assert schemas["FailedDelivery"]["properties"]["kind"]["enum"] == sorted(DestinationKind)
    assert set(schemas["DeliveryState"]["properties"]["kind"]["enum"]) <= set(ChangeKind)
    assert schemas["DeliveryState"]["properties"]["pubStatus"]["enum"] == list(PubStatus)
    assert schemas["PropagationItem"]["properties"]["kind"]["enum"] == [CORRECTION, KILL]
    deliveries = next(p for p in spec["paths"]["/api/deliveries"]["get"]["parameters"] if p.get("name") == "status")
    assert deliveries["schema"]["enum"] == list(DeliveryFilter)
    # the plain-string constants the push and the store use are the enums' values
    assert (WEBSUB, WEBHOOK) == (DestinationKind.WEBSUB, DestinationKind.WEBHOOK) and type(WEBSUB) is str


def test_the_dashboard_template_reads_only_attributes_the_models_have():
    """Rendered with StrictUndefined (the app's jinja environment renders a misspelt attribute as "")."""
    import jinja2

    from server.http import dashboard

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(dashboard.__file__).parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"duration": dashboard.duration, "ago": dashboard.ago, "utc": dashboard.utc,
                        "percent": dashboard.percent})
    now = datetime(2024, 5, 1, 11, 0, 0, tzinfo=UTC)
    overview = StatusOverview(now, (partner_row(),), QueueSummary(1, 1, 0, 3.0, 1, 0, 1))
    html = env.get_template("ops_dashboard.html").render(
        now=now, refresh=15, csrf="token", flash=None,
        propagation=PropagationReport(AT, now, (propagation_item(),), 1, 1, 1), overview=overview,
        partners=overview.partners, counts={state.value: overview.count(state) for state in PartnerHealth},
        items_page=Page(0, 20, 1), partners_page=Page(0, 50, 60), groups_page=Page(20, 20, 41),
        pages={"items": 0, "partners": 0, "failed": 1}, failed_total=1,
        groups=tuple(FailedDestination.group([FailedDelivery.from_record(failure_record())])),
        attempts=(DeliveryAttempt.from_fields(attempt_fields()),),
        chart=dashboard.activity_chart([{"start": now, "polls": 1, "pushes": 0}], now), behind_after=600.0)
    for shown in ('data-partner="beta" data-state="outstanding"', 'data-partner="acme" data-state="received"',
                  'data-state="behind"', "KILL", "webhook wh-1", "(public)", "TimeoutError: timed out", "HTTP 503",
                  "50%", "received v4 at 2024-05-01 10:05:30 UTC", "oldest 3 s", "Retry all",
                  "?partners=1#partners", "?failed=0#failed", "?failed=2#failed"):
        assert shown in html, shown
