"""One request's external processing, phase by phase: what wardgate does when Envoy sends
the request headers, the response headers and the response body of a route with a policy
(``extproc_policy.py``). The servicer (``extproc/processor.py``) turns each answer into
protobuf; nothing here knows gRPC or Redis.

Failure modes: header enrichment and the cache fail open (a store that cannot answer is
bypassed); ``response_json`` fails closed (a JSON body that cannot be filtered is answered
502 and never passed on); composition answers 502 when a required part fails.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from wardgate.domain.compose import Composed, Composer
from wardgate.domain.extproc_policy import HeaderEdit, Policy
from wardgate.domain.http_cache import (
    CACHEABLE_METHODS,
    Entry,
    cache_key,
    normalized_encoding,
    request_rule,
    storable_ttl,
    stored_headers,
)
from wardgate.domain.jsontext import loads
from wardgate.domain.response_cache import Fetch, Hit, Lead, ResponseCache, Waiting
from wardgate.domain.templates import Facts, valid_header_value

JSON_ERROR = (("content-type", "application/json"), ("cache-control", "no-store"))
_DECODABLE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_NO_BODY_STATUS = frozenset({204, 304})


class Recorder(Protocol):
    """Where the exchange counts what it did (``metrics.py`` through the servicer)."""

    def count(self, what: str, route: str, value: str) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class HeaderChanges:
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Continue:
    """Let the message go on, changed: headers, a new body, and which response phases Envoy
    should still send (None: as the route says)."""

    headers: HeaderChanges = HeaderChanges()
    body: bytes | None = None
    response_phases: tuple[bool, bool] | None = None  # (response headers, response body)


@dataclasses.dataclass(frozen=True, slots=True)
class Respond:
    """Answer the client now; nothing goes (further) upstream."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


Action = Continue | Respond


@dataclasses.dataclass(frozen=True, slots=True)
class Slow:
    """The answer takes longer than one message's deadline may allow: the servicer extends
    it (``Exchange.slow_budget``), then calls ``run``."""

    run: Callable[[], Awaitable[Action]]


def header_map(items: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names; a header sent more than once has its values joined with ','."""
    out: dict[str, str] = {}
    for key, value in items:
        name = key.lower()
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def utf8_label(content_type: str) -> str | None:
    """``content_type`` saying ``charset=utf-8`` where it names another charset (a filtered
    answer is written in UTF-8, whatever the upstream's was: JSON in UTF-16 is read as such);
    None when it needs no change."""
    media, *params = content_type.split(";")
    kept = [p.strip() for p in params if p.strip()]
    charsets = [p for p in kept if p.partition("=")[0].strip().lower() == "charset"]
    if all(p.partition("=")[2].strip().strip('"').lower() == "utf-8" for p in charsets):
        return None
    others = [p for p in kept if p not in charsets]
    return "; ".join([media.strip(), *others, "charset=utf-8"])


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Exchange:
    def __init__(
        self,
        *,
        policy: Policy,
        cache: ResponseCache | None,
        composer: Composer | None,
        via: str,
        tier: str,
        max_body: int,
        recorder: Recorder,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._cache = cache if policy.cache is not None else None
        self._composer = composer
        self._via = via
        self._tier = tier
        self._max = max_body
        self._rec = recorder
        self._clock = clock
        self.facts = Facts(route=policy.route)
        self._method = ""
        self._cache_active = False  # a GET/HEAD on a cached route: answers carry x-cache
        self._begun: Lead | Fetch | None = None
        self._ttl = 0.0
        self._status = 0
        self._resp_headers: list[tuple[str, str]] = []
        self._json = False  # this response's body is filtered by response_json
        self._content_type = ""
        self._encoding = ""

    def _count(self, what: str, value: str) -> None:
        self._rec.count(what, self.policy.route, value)

    # -- what may take longer than one message's deadline --------------------------------
    @property
    def slow_budget(self) -> float:
        """How long the request-headers phase may take: the composition's deadline, or how
        long a cache miss may wait for another request's answer."""
        if self.policy.parts:
            return self.policy.compose_timeout
        if self._cache is not None:
            return self._cache.wait
        return 0.0

    # -- request headers --------------------------------------------------------------------
    async def request_headers(self, items: list[tuple[str, str]]) -> Action | Slow:
        """The request's headers: their changes, or an answer; or ``Slow`` when answering
        may outlast Envoy's deadline for one message (a composition, a cache miss waiting for
        another request's answer)."""
        headers = header_map(items)
        self._method = headers.get(":method", "")
        self.facts = Facts(
            route=self.policy.route,
            request_id=headers.get("x-request-id", ""),
            user=headers.get("x-user-id", ""),
            roles=headers.get("x-user-roles", ""),
            auth_method=headers.get("x-auth-method", ""),
            tier=self._tier if headers.get("x-user-id") else "",
            headers=headers,
        )
        if self.policy.parts:
            return Slow(lambda: self._compose(headers))
        changes = self._request_changes(headers)
        if self._cache is None or self.policy.cache is None:
            return Continue(changes)
        begun = await self._cache_begin(headers)
        if isinstance(begun, Waiting):
            waiting = begun

            async def after_waiting() -> Action:
                return self._after_cache(self._took(await waiting.until()), changes)

            return Slow(after_waiting)
        return self._after_cache(begun, changes)

    def _after_cache(self, hit: Hit | None, changes: HeaderChanges) -> Action:
        if hit is not None:
            return self._hit_answer(hit)
        return Continue(changes, response_phases=self._response_phases())

    def _request_changes(self, headers: Mapping[str, str]) -> HeaderChanges:
        edit = self.policy.request_headers
        sets: tuple[tuple[str, str], ...] = ()
        removes: tuple[str, ...] = ()
        if edit is not None:
            sets, removes = self._render(edit, only_placeholders=True)
        accept = self._json_accept(headers.get("accept"))
        if accept is not None and not (edit and any(n == "accept" for n, _ in edit.set)):
            sets += (("accept", accept),)
        return HeaderChanges(sets, removes)

    def _json_accept(self, accept: str | None) -> str | None:
        """On a route that hides fields of JSON answers, the client may ask for JSON only:
        an upstream that negotiates would otherwise answer ``accept: text/html`` (a browser's)
        or ``application/xml`` with the same fields in a body the filter cannot read, passed
        untouched (Django REST framework's browsable API is such an HTML page). The client's
        JSON media ranges are kept; none: ``application/json``. None: no change."""
        if self.policy.response_json is None or accept is None:
            return None
        ranges = [r.strip() for r in accept.split(",") if r.strip()]
        kept = [r for r in ranges if is_json(r)]
        if kept and len(kept) == len(ranges):
            return None
        return ", ".join(kept) or "application/json"

    def _render(
        self, edit: HeaderEdit, *, only_placeholders: bool
    ) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
        """The edit's sets as values (those whose placeholders have no value, or whose value
        is not a header value, are removed instead); its removals unless Envoy does them."""
        sets: list[tuple[str, str]] = []
        removes: list[str] = [] if only_placeholders else list(edit.remove)
        # The constant ones Envoy sets itself (xds/extproc.py), except on a local answer.
        for name, template in edit.dynamic if only_placeholders else edit.set:
            value = template.render(self.facts.value)
            if value is None or not valid_header_value(value):
                self._count("transform", "no_value" if value is None else "bad_value")
                removes.append(name)
            else:
                sets.append((name, value))
        return tuple(sets), tuple(removes)

    def _response_phases(self) -> tuple[bool, bool]:
        """The response phases this request still needs."""
        p = self.policy
        dynamic = p.response_headers is not None and not p.response_headers.constant
        storing = self._begun is not None and self._begun.epoch is not None
        body = self._method != "HEAD" and (p.response_json is not None or storing)
        return (dynamic or p.response_json is not None or self._cache_active or body, body)

    # -- the cache --------------------------------------------------------------------------
    async def _cache_begin(self, headers: Mapping[str, str]) -> Hit | Waiting | None:
        """Look the request up: a hit, nothing (go upstream; ``self._begun`` says how), or
        another request fetching the same answer (``Waiting``)."""
        cache, policy = self._cache, self.policy.cache
        assert cache is not None and policy is not None
        rule = request_rule(
            self._method,
            headers,
            authenticated=self.policy.authenticated,
            shared=policy.shared,
            has_identity=bool(self.facts.user),
        )
        self._cache_active = self._method in CACHEABLE_METHODS
        if not rule.lookup and not rule.store:
            if self._cache_active:
                self._count("cache", "bypass")
                self._count("cache_bypass", rule.reason)
            return None
        key = cache_key(
            route=self.policy.route,
            fingerprint=self.policy.fingerprint,
            method=self._method,
            host=headers.get(":authority", ""),
            path=headers.get(":path", "").split("?", 1)[0],
            query=headers.get(":path", "").partition("?")[2],
            vary={name: headers.get(name) for name in policy.vary},
            accept_encoding=normalized_encoding(headers.get("accept-encoding")),
            partition=self._partition(),
        )
        begun = await cache.begin(key, lookup=rule.lookup)
        if isinstance(begun, Waiting):
            return begun
        return self._took(begun)

    def _took(self, begun: Hit | Lead | Fetch) -> Hit | None:
        if isinstance(begun, Hit):
            self._count("cache", "hit_after_wait" if begun.waited else "hit")
            return begun
        self._begun = begun
        if isinstance(begun, Lead):
            self._count("cache", "miss")
        elif begun.reason in ("store_down", "store_error"):
            self._count("cache", "unavailable")
        else:
            self._count("cache", "miss")
            self._count("cache_bypass", begun.reason)
        return None

    def _partition(self) -> tuple[str, ...]:
        """Whose entry: everyone's on a public or shared route, else the caller's identity
        (how they signed in, who, with which roles and tier)."""
        policy = self.policy.cache
        if not self.policy.authenticated or (policy is not None and policy.shared):
            return ("shared",)
        f = self.facts
        return ("user", f.auth_method, f.user, f.roles, f.tier)

    def _hit_answer(self, hit: Hit) -> Respond:
        entry = hit.entry
        # Every header as stored, a repeated one (link, content-security-policy, vary) with
        # each of its values: an answer from the cache is the answer the upstream gave.
        headers = [(k, v) for k, v in entry.headers if k not in ("age", "x-cache")]
        headers += [("age", str(entry.age_at(self._clock()))), ("x-cache", "HIT")]
        body = b"" if self._method == "HEAD" else entry.body
        return Respond(entry.status, self._edit_response(headers), body)

    def _edit_response(self, headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """A local answer gets the whole response edit (Envoy's own header edits may not see
        it)."""
        edit = self.policy.response_headers
        if edit is None:
            return tuple(headers)
        sets, removes = self._render(edit, only_placeholders=False)
        gone = {*removes, *(name for name, _ in sets)}
        return (*((k, v) for k, v in headers if k not in gone), *sets)

    # -- response headers -------------------------------------------------------------------
    async def response_headers(self, items: list[tuple[str, str]], end_of_stream: bool) -> Action:
        headers = header_map(items)
        self._resp_headers = [(k.lower(), v) for k, v in items]
        self._status = int(headers.get(":status", "0") or 0)
        sets: list[tuple[str, str]] = []
        removes: list[str] = []
        edit = self.policy.response_headers
        if edit is not None and not edit.constant:
            s, r = self._render(edit, only_placeholders=True)
            sets += s
            removes += r
        if self._cache_active:
            sets.append(("x-cache", "MISS"))
        has_body = (
            not end_of_stream and self._method != "HEAD" and (self._status not in _NO_BODY_STATUS)
        )
        self._encoding = headers.get("content-encoding", "").strip().lower()
        if self.policy.response_json is not None and has_body:
            if self._status == 206:  # a range of the document: not what the paths name
                self._count("transform", "json_refused_partial")
                return self.refused("a part of an answer (206) cannot be filtered")
            if is_json(headers.get("content-type", "")):
                if self._encoding not in ("", "identity", *_DECODABLE):
                    self._count("transform", "json_refused_encoding")
                    return self.refused(f"the answer is encoded with {self._encoding!r}")
                self._json = True
                self._content_type = headers.get("content-type", "")
            else:
                self._count("transform", "json_not_json")
        self._decide_storing(headers)
        if end_of_stream or not has_body or self._ttl <= 0:
            await self._store(b"")  # stored now (no body), or the key let go of at once
        if end_of_stream or not has_body:
            return Continue(HeaderChanges(tuple(sets), tuple(removes)))
        needs_body = self._json or self._begun is not None
        phases = None if needs_body else (True, False)
        return Continue(HeaderChanges(tuple(sets), tuple(removes)), response_phases=phases)

    def _decide_storing(self, headers: Mapping[str, str]) -> None:
        begun, policy = self._begun, self.policy.cache
        if begun is None or policy is None or begun.epoch is None:
            return
        keyed = {*policy.vary, "accept-encoding"}
        self._ttl, reason = storable_ttl(
            self._status, headers, ttl=policy.ttl, keyed_headers=keyed, now=self._clock()
        )
        if not self._ttl:
            self._count("cache_store", f"not_stored_{reason}")

    async def _store(self, body: bytes) -> None:
        """Store the answer if it may be (the leader lets go of its key either way)."""
        begun, self._begun = self._begun, None
        if begun is None:
            return
        entry = None
        if self._ttl > 0 and len(body) <= self._max:
            headers = self._resp_headers
            if self._json and self._encoding in _DECODABLE:
                headers = [(k, v) for k, v in headers if k != "content-encoding"]
            age = dict(headers).get("age", "")
            entry = Entry(
                self._status,
                stored_headers(headers),
                body,
                self._clock(),
                int(age) if age.isdigit() and len(age) < 10 else 0,
            )
        elif self._ttl > 0:
            self._count("cache_store", "not_stored_too_large")
        stored = await self._cache.finish(begun, entry, self._ttl) if self._cache else False
        if entry is not None:
            self._count("cache_store", "stored" if stored else "not_stored_store")

    # -- response body ----------------------------------------------------------------------
    async def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        complete = end_of_stream and len(body) <= self._max
        if not complete:
            # Larger than Envoy buffers (or than extproc_max_body_bytes): passed untouched,
            # never stored; a body that response_json must filter is refused instead.
            if self._json:
                self._count("transform", "json_refused_too_large")
                return self.refused("the answer is too large to filter")
            if self._begun is not None:
                self._ttl = 0.0
                self._count("cache_store", "not_stored_too_large")
                await self._store(b"")
            return Continue()
        if not self._json or not body.strip():
            # An empty JSON body (a chunked 200 with no data) holds nothing to hide.
            await self._store(body)
            return Continue()
        filtered = self._filter_json(body)
        if filtered is None:
            return self.refused("the answer is not JSON that can be filtered")
        # Envoy drops content-length itself (the body changed): the answer goes chunked.
        removes = ("content-encoding",) if self._encoding in _DECODABLE else ()
        relabel = utf8_label(self._content_type)
        sets = (("content-type", relabel),) if relabel else ()
        if relabel:
            self._resp_headers = [
                (k, relabel if k == "content-type" else v) for k, v in self._resp_headers
            ]
        await self._store(filtered)
        self._count("transform", "json_filtered")
        return Continue(HeaderChanges(sets, removes), body=filtered)

    def _filter_json(self, body: bytes) -> bytes | None:
        json_filter = self.policy.response_json
        assert json_filter is not None
        try:
            raw = body
            if self._encoding in _DECODABLE:
                inflater = zlib.decompressobj(_DECODABLE[self._encoding])
                raw = inflater.decompress(body, self._max + 1)
                if len(raw) > self._max or inflater.unconsumed_tail:
                    self._count("transform", "json_refused_too_large")
                    return None
            document = loads(raw)
            out = json.dumps(
                json_filter.apply(document),
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            ).encode()
        except (ValueError, UnicodeDecodeError, zlib.error, RecursionError):
            self._count("transform", "json_refused_malformed")
            return None
        return out

    def refused(self, why: str) -> Respond:
        """The fail-closed answer of response_json (and a 502 the client can read)."""
        return self.error(502, "bad_gateway", f"{why}; this route hides fields of its answers")

    def error(self, status: int, code: str, message: str) -> Respond:
        body = {"error": code, "message": message, "request_id": self.facts.request_id}
        return Respond(status, JSON_ERROR, json.dumps(body).encode())

    # -- composition ------------------------------------------------------------------------
    async def _compose(self, headers: Mapping[str, str]) -> Action:
        if self._composer is None or not self._via:
            self._count("compose", "unavailable")
            return self.error(
                503, "unavailable", "composition is not available on this gateway (no compose_port)"
            )
        if self._cache is not None:
            found = await self._cache_begin(headers)
            if isinstance(found, Waiting):
                found = self._took(await found.until())
            if found is not None:
                return self._hit_answer(found)
        composed = await self._composer.compose(
            via=self._via, policy=self.policy, facts=self.facts, host=headers.get(":authority", "")
        )
        for outcome in composed.outcomes:
            self._rec.count(
                "compose_part", f"{self.policy.route}/{outcome.name}", outcome.reason or "ok"
            )
        answer = self._composed_answer(composed)
        if answer.status != 200 or composed.partial:
            if self._begun is not None and self._cache is not None:
                unstored, self._begun = self._begun, None
                await self._cache.finish(unstored, None, 0.0)
        else:
            self._status = 200
            self._resp_headers = [("content-type", "application/json")]
            self._decide_storing({"content-type": "application/json"})
            await self._store(answer.body)
        return answer

    def _composed_answer(self, composed: Composed) -> Respond:
        if composed.status != 200 or composed.document is None:
            self._count("compose", "failed")
            detail = (
                ", ".join(
                    f"{o.name} ({o.reason})" for o in composed.outcomes if o.name in composed.failed
                )
                or "too large"
            )
            return self.error(
                502, "bad_gateway", f"a required part of this answer failed: {detail}"
            )
        document: Any = composed.document
        if self.policy.response_json is not None:
            document = self.policy.response_json.apply(document)
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        headers: dict[str, str] = {"content-type": "application/json"}
        if composed.partial:
            headers["x-compose-partial"] = ",".join(composed.partial)
            self._count("compose", "partial")
        else:
            self._count("compose", "complete")
        if self._cache_active:
            headers["x-cache"] = "MISS"
        answer = self._edit_response(list(headers.items()))
        return Respond(200, answer, b"" if self._method == "HEAD" else body)

    # -- the end ----------------------------------------------------------------------------
    async def close(self) -> None:
        """The stream ended: a leader that never stored lets go of its key."""
        begun, self._begun = self._begun, None
        if isinstance(begun, Lead) and self._cache is not None:
            await self._cache.abandon(begun)
