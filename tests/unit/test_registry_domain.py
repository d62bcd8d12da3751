"""Heartbeats are parsed strictly and never name the gateway's own insides."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wardgate.domain.registry import Reserved, parse_heartbeat, validate_instance

OWN = Reserved.of([("localhost", 6379), ("127.0.0.1", 18000), ("10.0.0.5", 18080)])
OK = {"service": "s", "address": "10.1.2.3", "port": 8080}


def test_a_good_heartbeat() -> None:
    beat = parse_heartbeat({**OK, "weight": 3, "ttl": 2.5}, reserved=OWN)
    assert (beat.service, beat.instance.address, beat.instance.port) == ("s", "10.1.2.3", 8080)
    assert (beat.instance.weight, beat.ttl) == (3, 2.5)


@pytest.mark.parametrize(
    ("address", "port"),
    [
        ("127.0.0.1", 6379),  # Redis named as localhost
        ("127.9.9.9", 18000),  # any loopback address
        ("::1", 18000),
        ("::ffff:127.0.0.1", 18000),
        ("10.0.0.5", 18080),
    ],
)
def test_the_gateways_own_endpoints_are_refused(address: str, port: int) -> None:
    with pytest.raises(ValueError, match="gateway's own endpoints"):
        parse_heartbeat({**OK, "address": address, "port": port}, reserved=OWN)


def test_addresses_are_canonical() -> None:
    assert validate_instance("::ffff:10.0.0.1", 80, 1, 10).address == "10.0.0.1"
    assert validate_instance("2001:0db8::0001", 80, 1, 10).address == "2001:db8::1"


@given(
    st.dictionaries(
        st.sampled_from(["service", "address", "port", "weight", "ttl", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    )
)
def test_any_body_is_a_heartbeat_or_a_value_error(body: dict[str, object]) -> None:
    try:
        beat = parse_heartbeat(body, reserved=OWN)
    except ValueError:
        return
    assert isinstance(beat.instance.port, int) and not isinstance(body["port"], bool)
    assert 0 < beat.instance.port < 65536 and 1 <= beat.ttl <= 3600
