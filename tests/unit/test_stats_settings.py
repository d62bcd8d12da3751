"""The statistics' settings: checked once, refused with a reason."""

from __future__ import annotations

import pytest

from wardgate.errors import SettingsError
from wardgate.settings import load_settings


def test_defaults_and_forms() -> None:
    s = load_settings(environ={})
    assert (s.access_log, s.otlp_endpoint, s.log_format) == (True, "", "text")
    s = load_settings(
        environ={
            "WARDGATE_OTLP_ENDPOINT": "http://collector.example:4317/",
            "WARDGATE_USAGE_RETENTION": "30d",
            "WARDGATE_ACCESS_LOG": "false",
            "WARDGATE_LOG_FORMAT": "json",
        }
    )
    assert s.otlp_endpoint == "collector.example:4317"
    assert (s.usage_retention, s.access_log, s.log_format) == (30 * 86400, False, "json")
    assert (
        load_settings(environ={"WARDGATE_OTLP_ENDPOINT": "[::1]:4317"}).otlp_endpoint
        == "[::1]:4317"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WARDGATE_OTLP_ENDPOINT", "https://collector:4317"),  # no TLS client here: say so
        ("WARDGATE_OTLP_ENDPOINT", "collector"),
        ("WARDGATE_OTLP_ENDPOINT", "collector:99999"),
        ("WARDGATE_OTLP_ENDPOINT", "a:1\nb:2"),
        ("WARDGATE_OTLP_ENDPOINT", "a b:1"),
        ("WARDGATE_USAGE_RETENTION", "10m"),
        ("WARDGATE_USAGE_RETENTION", "1000d"),
        ("WARDGATE_USAGE_FLUSH_INTERVAL", "2d"),
        ("WARDGATE_ACCESS_LOG_BUFFER_BYTES", "10"),
        ("WARDGATE_TOP_CLIENTS", "101"),
        ("WARDGATE_TRACE_SAMPLING", "150"),
        ("WARDGATE_LOG_FORMAT", "xml"),
        ("WARDGATE_STATS_MAX_ROUTES", "0"),
    ],
)
def test_bad_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(environ={name: value})
