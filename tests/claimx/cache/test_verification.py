"""The cache's answer alone: a loaded or coalesced answer settles once, a hit settles nothing."""

from __future__ import annotations

import pytest

from kafka_pipeline.claimx.cache.verification import HIT, Verification, is_not_found, not_found
from kafka_pipeline.errors import PermanentError
from tests.claimx.cache.helpers import snapshot


class Holder:
    def __init__(self) -> None:
        self.settled: list[tuple[str, str]] = []

    def confirm(self, project_id: str) -> None:
        self.settled.append(("confirm", project_id))

    def abandon(self, project_id: str) -> None:
        self.settled.append(("abandon", project_id))


def test_the_block_that_produces_the_rows_confirms_when_it_ends() -> None:
    holder = Holder()
    with Verification("loaded", snapshot("p1"), holder) as verification:
        assert verification.carries_project and holder.settled == []
    assert holder.settled == [("confirm", "p1")]


def test_the_block_abandons_when_it_raises() -> None:
    holder = Holder()
    with pytest.raises(RuntimeError), Verification("coalesced", snapshot("p1"), holder):
        raise RuntimeError("produce failed")
    assert holder.settled == [("abandon", "p1")]


def test_abandon_alone_and_a_hit_settles_nothing() -> None:
    holder = Holder()
    Verification("loaded", snapshot("p1"), holder).abandon()
    assert holder.settled == [("abandon", "p1")]
    with HIT:
        pass
    HIT.abandon()
    assert not HIT.carries_project and Verification("loaded", snapshot("p2")).carries_project
    Verification("loaded", snapshot("p2")).confirm()  # no holder (NoCache): nothing to tell
    assert holder.settled == [("abandon", "p1")]


def test_answers_compare_by_outcome_and_rows_not_by_holder() -> None:
    assert Verification("loaded", snapshot("p1"), Holder()) == Verification("loaded", snapshot("p1"))
    assert HIT == Verification("hit", None)


def test_not_found_is_the_permanent_error_the_absent_cache_raises() -> None:
    error = not_found("p9")
    assert isinstance(error, PermanentError) and error.error_type == "NotFound" and is_not_found(error)
    assert not is_not_found(PermanentError("400", error_type="BadRequest")) and not is_not_found(RuntimeError())
