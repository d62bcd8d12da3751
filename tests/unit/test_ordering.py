"""Make before break per stream: which clusters an Envoy's routes may still use."""

from __future__ import annotations

from wardgate.xds.ordering import Sequencer
from wardgate.xds.snapshot import Snapshot
from wardgate.xds.typeurls import TYPE_ROUTE


def _routes(seq: Sequencer, nonce: str, uses: set[str], names: set[str]) -> None:
    seq.sent(TYPE_ROUTE, nonce, Snapshot({}, route_clusters=frozenset(uses)), {}, names)


def test_accepted_routes_set_what_is_in_use() -> None:
    seq = Sequencer()
    _routes(seq, "1", {"a", "c"}, {"x", "y"})
    assert seq.in_use() == {"a", "c"}  # sent, not answered: may be about to be used
    seq.answered(TYPE_ROUTE, "1", accepted=True)
    _routes(seq, "2", {"a"}, {"x"})
    seq.answered(TYPE_ROUTE, "2", accepted=True)
    assert seq.in_use() == {"a"}


def test_after_a_refused_configuration_an_accepted_partial_response_does_not_drop_clusters() -> (
    None
):
    """x stops using c and is refused: the Envoy keeps the old x, which routes to c. A later
    response carrying only y (accepted) must not let c go; a new x accepted does."""
    seq = Sequencer()
    _routes(seq, "1", {"a", "c"}, {"x", "y"})
    seq.answered(TYPE_ROUTE, "1", accepted=True)
    _routes(seq, "2", {"a"}, {"x"})
    seq.answered(TYPE_ROUTE, "2", accepted=False)
    assert "c" in seq.in_use()
    _routes(seq, "3", {"a"}, {"y"})
    seq.answered(TYPE_ROUTE, "3", accepted=True)
    assert "c" in seq.in_use()
    _routes(seq, "4", {"a"}, {"x"})
    seq.answered(TYPE_ROUTE, "4", accepted=True)
    assert seq.in_use() == {"a"}
