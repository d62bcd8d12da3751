"""Which first requests say the Envoy already holds configuration (so a replica that cannot
check the store must not answer it): both ADS variants."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from wardgate.xds.stream import has_configuration


def test_state_of_the_world_and_delta_reconnects_are_recognised() -> None:
    assert not has_configuration(discovery_pb2.DiscoveryRequest(type_url="t"))
    assert has_configuration(discovery_pb2.DiscoveryRequest(type_url="t", version_info="abc"))
    fresh = discovery_pb2.DeltaDiscoveryRequest(type_url="t")
    assert not has_configuration(fresh)
    again = discovery_pb2.DeltaDiscoveryRequest(type_url="t")
    again.initial_resource_versions["cluster-a"] = "v1"
    assert has_configuration(again)
