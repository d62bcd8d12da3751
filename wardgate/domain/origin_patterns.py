"""Allowed CORS origins as a route writes them: exact origins, ``*``, and wildcard origins.

A wildcard origin is ``scheme://*.domain[:port]``: the ``*`` stands for one or more whole DNS
labels (letters, digits, hyphens) in front of ``domain`` (``https://*.example.com`` allows ``https://app.example.com``
and ``https://a.b.example.com``, never ``https://example.com`` itself, nor
``https://evilexample.com`` or ``https://app.example.com.evil.net``). The scheme and port are
fixed (the port being the scheme's default when none is written). ``domain`` has at least two
labels (``*.com`` would allow the whole of .com) and the ``*`` is the whole leftmost label
(``https://app-*.example.com`` and ``https://a.*.example.com`` are refused): what Envoy
Gateway and Kong accept, without their regex escape hatch.

One pattern gives two equal answers: an RE2 regex for Envoy's CORS filter (which compares the
request's ``Origin`` header) and ``pattern_allows`` for the CSRF check in Python
(``origins.py``). Neither can match a header value holding anything outside
``[A-Za-z0-9.:/-]``, so no control character, CR or LF can ever be reflected.
"""

from __future__ import annotations

import dataclasses
import re

from wardgate.domain.doc_base import check_envoy_regex

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EXACT_ORIGIN_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$"
WILDCARD_ORIGIN_PATTERN = rf"^https?://\*(\.{_LABEL}){{2,}}(:[0-9]{{1,5}})?$"
_EXACT = re.compile(EXACT_ORIGIN_PATTERN)
# What the '*' stands for, label by label: the same class in Envoy's regex (kept small: Envoy
# refuses regexes whose RE2 program is over 100).
_ORIGIN_LABEL = re.compile(r"[A-Za-z0-9-]+")
_WILDCARD = re.compile(WILDCARD_ORIGIN_PATTERN)
MAX_ORIGIN = 253 + len("https://:65535")


@dataclasses.dataclass(frozen=True)
class WildcardOrigin:
    """``scheme://*.domain:port``, normalized (lower case, the port filled in)."""

    scheme: str
    domain: str
    port: int
    explicit_port: bool

    def regex(self) -> str:
        """An RE2 regex that Envoy matches against the whole ``Origin`` header: the scheme,
        one or more labels, ``.domain``, and the port only as written (a browser omits the
        default port, so a pattern without one matches only an origin without one)."""
        port = f":{self.port}" if self.explicit_port else ""
        return (
            f"(?i){self.scheme}://([a-z0-9-]+\\.)+"
            + re.escape(self.domain).replace("\\-", "-")
            + re.escape(port)
        )

    def allows(self, scheme: str, host: str, port: int) -> bool:
        """Whether the (normalized) origin ``scheme://host:port`` is one this allows."""
        if scheme != self.scheme or port != self.port:
            return False
        if not host.endswith("." + self.domain):
            return False
        labels = host[: -len(self.domain) - 1].split(".")
        return all(_ORIGIN_LABEL.fullmatch(label) for label in labels)


def is_wildcard(origin: str) -> bool:
    return "*" in origin and origin != "*"


def parse_wildcard(origin: str) -> WildcardOrigin:
    """The pattern ``origin``; ValueError saying why it is not one."""
    if len(origin) > MAX_ORIGIN or not _WILDCARD.fullmatch(origin):
        raise ValueError(
            "a wildcard origin is scheme://*.domain[:port] with '*' the whole leftmost "
            "label and a domain of two or more labels, such as https://*.example.com"
        )
    scheme, rest = origin.lower().split("://", 1)
    host, _, port_text = rest.partition(":")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ValueError("the port of a wildcard origin is 1 to 65535")
    pattern = WildcardOrigin(scheme, host.removeprefix("*."), port, bool(port_text))
    check_envoy_regex(pattern.regex(), "the wildcard origin")  # e.g. too long a domain
    return pattern


def check_origin(origin: str) -> None:
    """ValueError unless ``origin`` is ``*``, an exact origin or a wildcard origin."""
    if origin == "*":
        return
    if is_wildcard(origin):
        parse_wildcard(origin)
        return
    if len(origin) > MAX_ORIGIN or not _EXACT.fullmatch(origin):
        raise ValueError("not an origin such as https://app.example.com or https://*.example.com")
