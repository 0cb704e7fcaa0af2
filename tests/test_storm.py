"""The storm (issue 11, item 7): 2 servers, a worker and our own Redis as real processes, 24 partners of
every kind, 200 stories (30% corrected, some re-filed between feeds, 5% killed), one server and the
Redis SIGKILLed mid-storm. Black-box: only HTTP, so it keeps working whatever the server's internals.

The storm runs once (about a minute and a half, see ``tests/storm.py``); each test below asserts one of
the promises on its figures, and every failure message carries the whole summary.
"""

from __future__ import annotations

import asyncio

import pytest
from storm import StormConfig, StormResult, run_storm

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> StormResult:
    result = asyncio.run(run_storm(StormConfig(), tmp_path_factory.mktemp("storm")))
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for line in result.summary().splitlines():
            reporter.write_line(line)
    return result


def test_the_storm_was_a_storm(storm: StormResult) -> None:
    """The run itself: partners of every kind, the planned writes acknowledged, both faults made."""
    assert storm.partners >= 20 and all(n >= 5 for n in storm.kinds.values()), storm.summary()
    assert storm.stories == 200 and storm.corrections >= 60 and storm.kills >= 10, storm.summary()
    assert storm.refilings > 0, storm.summary()
    assert len(storm.faults) == 2, storm.summary()
    assert not storm.refused_writes, storm.summary()
    assert storm.unresolved == 0, storm.summary()  # every item received maps to a version


def test_no_acknowledged_revision_is_lost(storm: StormResult) -> None:
    assert storm.acknowledged > 0 and storm.lost == [], storm.summary()


def test_no_entitled_partner_is_stale(storm: StormResult) -> None:
    """Everyone who may read the story's latest revision, or had an earlier one, has the latest."""
    assert storm.stale == [], storm.summary()


def test_the_propagation_report_equals_the_partners_logs(storm: StormResult) -> None:
    assert storm.mismatches == [], storm.summary()


def test_no_revision_is_resent_after_a_2xx(storm: StormResult) -> None:
    """Only a crash between the POST and its acknowledgement may repeat a delivery (same delivery id)."""
    assert storm.repeats_after_2xx == [], storm.summary()


def test_no_older_revision_after_a_newer_one(storm: StormResult) -> None:
    assert storm.older_after_newer == [], storm.summary()
