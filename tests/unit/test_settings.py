"""Settings: defaults, the config file, the environment, and what is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wardgate.errors import SettingsError
from wardgate.settings import Settings, env_name, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wardgate.yaml"
    path.write_text(text)
    return path


def test_defaults_with_an_empty_environment() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.key_prefix == "wardgate:"
    assert (s.grpc_port, s.http_port, s.listen_port) == (18000, 18080, 10000)
    assert s.session_cookie == "wg_session"
    assert (s.authz_failure_mode, s.ratelimit_failure_mode) == ("closed", "open")
    assert s.advertised_http_port == 18080


def test_the_process_environment_is_not_read_when_environ_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WARDGATE_GRPC_PORT", "1234")
    assert load_settings(environ={}).grpc_port == 18000


def test_env_names() -> None:
    assert env_name("redis_url") == "REDIS_URL"
    assert env_name("grpc_port") == "WARDGATE_GRPC_PORT"
    # Every setting has one, and they are all different.
    names = [env_name(f.name) for f in dataclasses.fields(Settings)]
    assert len(set(names)) == len(names)


def test_environment_values_are_coerced() -> None:
    s = load_settings(
        environ={
            "REDIS_URL": "redis://cache:6380/2",
            "WARDGATE_KEY_PREFIX": "{wg}:",
            "WARDGATE_GRPC_PORT": "19000",
            "WARDGATE_WORKERS": "4",
            "WARDGATE_COOKIE_SECURE": "yes",
            "WARDGATE_LOG_LEVEL": "debug",
            "WARDGATE_AUTHZ_FAILURE_MODE": "open",
            "WARDGATE_HTTP_ADVERTISE_PORT": "18099",
        }
    )
    assert s.redis_url == "redis://cache:6380/2"
    assert s.key_prefix == "{wg}:"
    assert s.grpc_port == 19000
    assert s.workers == 4
    assert s.cookie_secure is True
    assert s.log_level == "DEBUG"
    assert s.authz_failure_mode == "open"
    assert s.advertised_http_port == 18099


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("1m", 60.0), ("12h", 43200.0), ("1d", 86400.0)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    s = load_settings(
        environ={"WARDGATE_REDIS_TIMEOUT": text, "WARDGATE_SESSION_TTL": text},
    )
    assert s.redis_timeout == pytest.approx(seconds)
    assert s.session_ttl == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), ("on", True), ("0", False), ("NO", False)]
)
def test_booleans(text: str, value: bool) -> None:
    assert load_settings(environ={"WARDGATE_COOKIE_SECURE": text}).cookie_secure is value


def test_an_empty_environment_value_is_ignored() -> None:
    assert load_settings(environ={"WARDGATE_GRPC_PORT": ""}).grpc_port == 18000


def test_the_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "grpc_port: 19001\n"
        "redis_timeout: 500ms\n"
        "resync_interval: 2\n"
        "cookie_secure: true\n"
        "key_prefix: 'app:'\n",
    )
    s = load_settings(config_file=path, environ={})
    assert s.grpc_port == 19001
    assert s.redis_timeout == pytest.approx(0.5)
    assert s.resync_interval == pytest.approx(2.0)
    assert s.cookie_secure is True
    assert s.key_prefix == "app:"
    assert s.http_port == 18080  # not in the file: the default


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc_port: 19001\nhttp_port: 19002\nredis_url: redis://file:1/0\n")
    s = load_settings(
        config_file=path, environ={"WARDGATE_GRPC_PORT": "20001", "REDIS_URL": "redis://env:2/0"}
    )
    assert s.grpc_port == 20001
    assert s.redis_url == "redis://env:2/0"
    assert s.http_port == 19002  # only in the file


def test_explicit_overrides_win_over_everything(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc_port: 19001\n")
    s = load_settings(
        config_file=path, environ={"WARDGATE_GRPC_PORT": "20001"}, grpc_port=21001, workers=None
    )
    assert s.grpc_port == 21001
    assert s.workers == 1  # None: not overridden


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_settings(config_file=write(tmp_path, ""), environ={}) == Settings()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("WARDGATE_GRPC_PORT", "abc"),
        ("WARDGATE_GRPC_PORT", "-1"),
        ("WARDGATE_GRPC_PORT", "1.5"),
        ("WARDGATE_WORKERS", "many"),
        ("WARDGATE_REDIS_TIMEOUT", "fast"),
        ("WARDGATE_REDIS_TIMEOUT", "0s"),
        ("WARDGATE_REDIS_TIMEOUT", "-1s"),
        ("WARDGATE_SESSION_TTL", "12"),
        ("WARDGATE_EXT_AUTHZ_TIMEOUT", "250 millis"),
        ("WARDGATE_COOKIE_SECURE", "maybe"),
        ("WARDGATE_AUTHZ_FAILURE_MODE", "sometimes"),
        ("WARDGATE_RATELIMIT_FAILURE_MODE", "half"),
        ("WARDGATE_LOG_LEVEL", "verbose"),
    ],
)
def test_bad_values_raise_naming_the_env_var(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={var: value})
    assert var in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("grpc_port: many\n", "WARDGATE_GRPC_PORT"),
        ("redis_timeout: 0\n", "WARDGATE_REDIS_TIMEOUT"),
        ("redis_timeout: [1]\n", "WARDGATE_REDIS_TIMEOUT"),
        ("cookie_secure: sometimes\n", "WARDGATE_COOKIE_SECURE"),
    ],
)
def test_bad_values_in_the_file_raise_naming_the_setting(
    tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(config_file=write(tmp_path, text), environ={})


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc_port: 19001\ngrcp_port: 19002\n")
    with pytest.raises(SettingsError, match="unknown setting 'grcp_port'"):
        load_settings(config_file=path, environ={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "a: [\n"])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError, match="config file"):
        load_settings(config_file=write(tmp_path, text), environ={})


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(config_file=tmp_path / "nope.yaml", environ={})


def test_an_empty_key_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="WARDGATE_KEY_PREFIX"):
        load_settings(config_file=write(tmp_path, "key_prefix: ''\n"), environ={})


def test_with_overrides_returns_a_new_settings() -> None:
    s = Settings()
    t = s.with_overrides(grpc_port=1)
    assert (s.grpc_port, t.grpc_port) == (18000, 1)


@pytest.mark.parametrize(
    "var", ["WARDGATE_GRPC_PORT", "WARDGATE_HTTP_PORT", "WARDGATE_LISTEN_PORT"]
)
def test_a_port_out_of_range_is_refused(var: str) -> None:
    with pytest.raises(SettingsError, match=var):
        load_settings(environ={var: "70000"})


def test_a_nan_duration_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="WARDGATE_REDIS_TIMEOUT"):
        load_settings(config_file=write(tmp_path, "redis_timeout: .nan\n"), environ={})
