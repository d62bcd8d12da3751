"""Every Redis key name and Lua script wardgate uses, in one place.

All keys start with the configured prefix (default ``wardgate:``; under Redis Cluster give it
a hash tag, e.g. ``{wardgate}:``, so the document hashes share a slot). Rate-limit counters
carry their own hash tag per counter so that they spread over the cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib


@dataclasses.dataclass(frozen=True)
class Keys:
    prefix: str = "wardgate:"

    # -- documents (hashes: field = name, value = JSON document) --
    @property
    def routes(self) -> str:
        return f"{self.prefix}routes"

    @property
    def services(self) -> str:
        return f"{self.prefix}services"

    @property
    def issuers(self) -> str:
        return f"{self.prefix}issuers"

    @property
    def descriptors(self) -> str:
        return f"{self.prefix}descriptors"

    @property
    def secrets(self) -> str:
        """TLS certificates and keys (Secret documents): private keys; protect Redis."""
        return f"{self.prefix}secrets"

    def documents(self, kind: str) -> str:
        return {
            "Route": self.routes,
            "Service": self.services,
            "Issuer": self.issuers,
            "Descriptor": self.descriptors,
            "Secret": self.secrets,
        }[kind]

    def last_good(self, kind: str) -> str:
        """Hash like the documents hash: the version of each document last served, so that
        every replica falls back to the same one when a raw write breaks a document."""
        return f"{self.prefix}lastgood:{self.documents(kind).removeprefix(self.prefix)}"

    @property
    def revision(self) -> str:
        """INCR'd by every CLI write; part of the change record."""
        return f"{self.prefix}revision"

    @property
    def history(self) -> str:
        """A stream: one entry per applied change (revision, who, what)."""
        return f"{self.prefix}history"

    @property
    def changes_channel(self) -> str:
        """Pub/sub channel the CLI publishes on after every write."""
        return f"{self.prefix}changes"

    @property
    def refused(self) -> str:
        """Hash: 'Kind/name' -> reason, for raw writes the watcher refused."""
        return f"{self.prefix}status:refused"

    @property
    def nodes(self) -> str:
        """Hash: node id -> JSON of what that Envoy ACKed/NACKed (written by ADS)."""
        return f"{self.prefix}status:nodes"

    def refused_clients(self, rule: str, minute: int) -> str:
        """HyperLogLog of the clients one rule refused in one minute."""
        return f"{self.spread}rl:refused:{{{rule}}}:{minute}"

    # -- service registry --
    def registry(self, service: str) -> str:
        """Sorted set of one service's live instances: member 'address|port|weight',
        score = the time (ms) its last heartbeat expires."""
        return f"{self.prefix}registry:{service}"

    @property
    def registry_channel(self) -> str:
        """Pub/sub channel announcing an instance that appeared or left."""
        return f"{self.prefix}registry:changes"

    # -- identity --
    @property
    def users(self) -> str:
        """Hash: user name -> JSON {password_hash, roles}."""
        return f"{self.prefix}users"

    @property
    def spread(self) -> str:
        """The prefix without its hash tag, for keys that should spread over a cluster's
        slots (one per session, counter, ...) rather than sit in the documents' slot."""
        return self.prefix.replace("{", "").replace("}", "")

    def session(self, id_hash: str) -> str:
        """Hash of one session, keyed by the SHA-256 of its id (never the id itself)."""
        return f"{self.spread}session:{id_hash}"

    def user_sessions(self, user: str) -> str:
        """Set of session id hashes of one user, for revoke-all and listing."""
        return f"{self.spread}user_sessions:{user}"

    def login_failures(self, user: str) -> str:
        """Counter of failed logins for one user name, expiring with its window."""
        return f"{self.spread}login_failures:{hashlib.sha256(user.encode()).hexdigest()}"

    @property
    def sessions_channel(self) -> str:
        """Pub/sub channel announcing revoked sessions (for local caches)."""
        return f"{self.prefix}sessions:revoked"

    @property
    def api_keys(self) -> str:
        """Hash: SHA-256 of the key -> JSON {name, roles, tier, created_at, expires_at}."""
        return f"{self.prefix}apikeys"

    @property
    def api_key_names(self) -> str:
        """Hash: key name -> SHA-256 of the key (names are unique; revoke by name)."""
        return f"{self.prefix}apikey_names"

    @property
    def api_keys_channel(self) -> str:
        """Pub/sub channel announcing revoked API keys (the SHA-256), for local caches."""
        return f"{self.prefix}apikeys:revoked"

    # -- session tickets (domain/tickets.py) --
    @property
    def ticket_keys(self) -> str:
        """Hash: key id -> JSON {jwk, sign_from, keep_until}: the public halves of the
        processes' ticket signing keys (the private halves never leave their process)."""
        return f"{self.prefix}tickets:keys"

    @property
    def ticket_keys_version(self) -> str:
        """A counter raised by every change to ``ticket_keys``."""
        return f"{self.prefix}tickets:keys:version"

    @property
    def revoked_sessions(self) -> str:
        """Sorted set: ticket sid of a revoked session -> when it was revoked (epoch ms);
        entries older than a ticket's longest lifetime are deleted."""
        return f"{self.prefix}tickets:revoked"

    @property
    def revoked_sessions_version(self) -> str:
        """A counter raised by every revocation."""
        return f"{self.prefix}tickets:revoked:version"

    # -- bans --
    @property
    def bans(self) -> str:
        """Sorted set: banned network -> when the ban ends (epoch ms)."""
        return f"{self.prefix}bans"

    @property
    def bans_version(self) -> str:
        """A counter raised by every change to ``bans``: readers re-read the set on change."""
        return f"{self.prefix}bans:version"

    def strikes(self, network: str) -> str:
        """Refusals of one network within the ban window (same slot as ``bans``)."""
        return f"{self.prefix}strikes:{network}"

    # -- rate limiting --
    def counter(self, rule: str, value: str, window: int) -> str:
        # The hash tag holds rule and client, so counters spread over a cluster's slots. A
        # prefix's own tag ({wardgate}:) would win (Redis hashes the first {...}): dropped.
        return f"{self.spread}rl:{{{rule}|{value}}}:{window}"

    # -- statistics (wardgate/stats/, store/usage.py) --
    def usage(self, by: str, hour: int) -> str:
        """Hash: usage of one dimension (user, api_key, route) in one hour (unix time // 3600);
        fields ``r:KEY``, ``i:KEY``, ``o:KEY`` = requests, bytes in, bytes out."""
        return f"{self.prefix}usage:{by}:{hour}"

    def usage_batch(self, batch_id: str) -> str:
        """Marker of a flushed batch (a day): the same batch is never applied twice."""
        return f"{self.prefix}usage:batch:{batch_id}"

    def limited(self, minute: int) -> str:
        """Sorted set: client -> requests refused by rate limits in one minute (top 1000)."""
        return f"{self.prefix}limited:{minute}"

    def limited_clients(self, minute: int) -> str:
        """HyperLogLog: the distinct clients refused by rate limits in one minute."""
        return f"{self.prefix}limited:hll:{minute}"

    # -- response cache (one hash tag per route: a route's entries, locks and epoch share a
    #    slot, so the scripts below work under Redis Cluster; routes spread over slots) --
    def cache_entry(self, route: str, path_hash: str, variant: str) -> str:
        """String: one cached answer (``domain/http_cache.py`` ``Entry.encode``), with a TTL."""
        return f"{self.spread}cache:{{{route}}}:e:{path_hash}:{variant}"

    def cache_lock(self, route: str, variant: str) -> str:
        """String: the token of the request fetching this entry, or ``pass`` (its answer
        could not be stored), with a short TTL."""
        return f"{self.spread}cache:{{{route}}}:l:{variant}"

    def cache_epoch(self, route: str) -> str:
        """Counter raised by every purge of the route: an answer fetched before a purge is not
        stored after it."""
        return f"{self.spread}cache:{{{route}}}:epoch"

    @property
    def compose_key(self) -> str:
        """String: the deployment's compose key (random, created by the first wardgate to
        read documents): Envoy's compose listener routes only requests that carry it."""
        return f"{self.prefix}compose:key"

    @property
    def cache_purged_channel(self) -> str:
        """Pub/sub channel announcing a purge (the route's name): each process's entries in
        memory go."""
        return f"{self.prefix}cache:purged"

    def cache_entries_pattern(self, route: str, path_hash: str | None) -> str:
        """SCAN pattern of a route's entries (of one path, with ``path_hash``)."""
        tail = f"{path_hash}:*" if path_hash else "*"
        return f"{_glob_escape(self.spread)}cache:{{{route}}}:e:{tail}"

    # -- quota (enforce: quota) --
    def quota(self, rule: str, client: str) -> str:
        """Hash of one quota bucket: its budget and each Envoy's lease (QUOTA_LUA). The hash
        tag holds rule and client, so buckets spread over a cluster's slots."""
        return f"{self.spread}quota:{{{rule}|{client}}}"


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


# The response cache (store/response_cache.py). KEYS: entry, lock, epoch.
# ARGV: the lock token ("" to only read), the lock's time to live in ms.
# Returns {entry or nil, "taken"|"held"|"pass"|"none", epoch}.
CACHE_LOOKUP_LUA = r"""
local entry = redis.call('GET', KEYS[1])
local epoch = redis.call('GET', KEYS[3]) or '0'
local state = 'none'
if ARGV[1] ~= '' and not entry then
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    state = 'taken'
  elseif redis.call('GET', KEYS[2]) == 'pass' then
    state = 'pass'
  else
    state = 'held'
  end
end
return {entry or false, state, epoch}
"""

# KEYS: entry, lock, epoch. ARGV: value, time to live in ms, the epoch read at lookup, the lock
# token ("" when the request did not take the lock). Stores unless the route was purged since;
# lets go of its own lock or a pass mark. Returns 1 when stored.
CACHE_STORE_LUA = r"""
local stored = 0
if (redis.call('GET', KEYS[3]) or '0') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  stored = 1
end
local lock = redis.call('GET', KEYS[2])
if lock and ((ARGV[4] ~= '' and lock == ARGV[4]) or lock == 'pass') then
  redis.call('DEL', KEYS[2])
end
return stored
"""

# KEYS: lock. ARGV: the lock token, how long a pass mark stays (ms; 0: none).
CACHE_RELEASE_LUA = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], 'pass', 'PX', ARGV[2])
  else
    redis.call('DEL', KEYS[1])
  end
end
return 0
"""


# Check-then-commit over several limits in one round trip.
# KEYS: per limit i, two keys: KEYS[2i-1] = current (counter or GCRA tat), KEYS[2i] = previous
#       window counter (sliding window; unused otherwise).
# ARGV[1] = now in milliseconds; then per limit, 5 values: algorithm (1 fixed, 2 sliding,
#       3 token bucket), limit, period in ms, window start in ms, shadow (1: never refuses).
# Optionally one more ARGV after those: "check" (decide, spend nothing) - Redis Cluster's first
# phase when a request's limits live in several slots.
# Returns a flat list, per limit: allowed (1/0), remaining, ms until reset.
# A refused request spends nothing: counters are only incremented if every limit allows it.
RATE_LIMIT_LUA = r"""
local now = tonumber(ARGV[1])
local n = #KEYS / 2
local out = {}
local ok = true
local plan = {}
for i = 1, n do
  local alg = tonumber(ARGV[2 + (i-1)*5])
  local limit = tonumber(ARGV[3 + (i-1)*5])
  local period = tonumber(ARGV[4 + (i-1)*5])
  local wstart = tonumber(ARGV[5 + (i-1)*5])
  local shadow = ARGV[6 + (i-1)*5] == '1'
  local cur = KEYS[2*i-1]
  local allowed, remaining, reset
  if alg == 3 then
    -- GCRA: one theoretical arrival time per key; burst = limit, emission = period/limit
    local emission = period / limit
    local tat = tonumber(redis.call('GET', cur) or '0')
    if tat < now then tat = now end
    local new_tat = tat + emission
    local allow_at = new_tat - period
    if allow_at <= now then
      allowed = 1
      remaining = math.floor((now - allow_at) / emission)
      plan[i] = {'tat', cur, new_tat, math.ceil(new_tat - now)}
      reset = math.ceil(new_tat - now)
    else
      allowed = 0
      remaining = 0
      reset = math.ceil(allow_at - now)
    end
  else
    local count = tonumber(redis.call('GET', cur) or '0')
    local estimate = count
    if alg == 2 then
      local prev = tonumber(redis.call('GET', KEYS[2*i]) or '0')
      local weight = 1 - ((now - wstart) / period)
      if weight < 0 then weight = 0 end
      estimate = count + prev * weight
    end
    reset = wstart + period - now
    if estimate + 1 <= limit then
      allowed = 1
      remaining = math.floor(limit - estimate - 1)
      plan[i] = {'incr', cur, period}
    else
      allowed = 0
      remaining = 0
    end
  end
  if allowed == 0 and not shadow then ok = false end
  out[#out+1] = allowed
  out[#out+1] = remaining
  out[#out+1] = reset
end
if #ARGV == 2 + n * 5 and ARGV[#ARGV] == 'check' then ok = false end
if ok then
  for i = 1, n do
    local p = plan[i]
    if p == nil then
      -- a shadow limit that is over: nothing to spend
    elseif p[1] == 'tat' then
      redis.call('SET', p[2], p[3], 'PX', p[4])
    else
      local c = redis.call('INCR', p[2])
      if c == 1 then redis.call('PEXPIRE', p[2], p[3] * 2) end
    end
  end
end
return out
"""


# One refusal of a network: count it, and ban the network once the count reaches the threshold.
# KEYS[1] = the network's strikes, KEYS[2] = the bans sorted set, KEYS[3] = the bans version.
# ARGV: threshold, window in ms, ban end in ms, the network. Returns 1 when a ban started.
STRIKE_LUA = r"""
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
local changed = redis.call('ZADD', KEYS[2], 'GT', 'CH', ARGV[3], ARGV[4])
if changed == 1 then redis.call('INCR', KEYS[3]) end
return changed
"""


# Slide a session's idle expiry, only if the session still exists (a revoked one must not
# come back as a stub). KEYS[1] = the session hash; ARGV[1] = the new idle expiry.
TOUCH_SESSION_LUA = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'idle_expires_at', ARGV[1])
end
"""


# A batch of usage figures and rate-limited clients, applied once (store/usage.py).
# KEYS[1] = the batch's marker; KEYS[2..] = the keys written.
# ARGV[1] = the marker's lifetime in seconds; then three lists, each a count and its items:
#   HINCRBY items (key index, field, amount), ZINCRBY items (key index, member, amount),
#   PFADD items (key index, member); then per KEYS[2..]: lifetime in seconds, and how many
#   members a sorted set keeps (0: not a sorted set).
# Returns 1 when applied, 0 when this batch had been applied before.
USAGE_BATCH_LUA = r"""
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]); i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 2], ARGV[i + 1]); i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('PFADD', KEYS[tonumber(ARGV[i])], ARGV[i + 1]); i = i + 2
end
for k = 2, #KEYS do
  redis.call('EXPIRE', KEYS[k], ARGV[i])
  local keep = tonumber(ARGV[i + 1])
  if keep > 0 then redis.call('ZREMRANGEBYRANK', KEYS[k], 0, -(keep + 1)) end
  i = i + 2
end
return 1
"""

# One bucket of one Envoy's quota report: spend what it reports, then answer with its lease
# (domain/quota.py has the rules). KEYS[1] = the bucket's hash: field 'g' = the budget left
# (may be below zero: requests admitted beyond leases, to be repaid), 't' = when it was last
# refilled (ms; for a fixed window, the window's number), 'h:<holder>' = one Envoy's lease
# "c u d seen serial active b": what it holds, how much of that it used, its demand in its last
# report, when it last reported, its lease's serial, when it last saw a request, and what its
# local bound can still admit (a mirror: refilled at the rule's rate up to the bound).
# ARGV: now (ms), holder, allowed, denied, requests, period (ms), algorithm (1 fixed window,
# 3 token bucket), holder expiry (ms), abandon after (ms), the Envoy's local bound (what it
# admits at once without a lease; the quota filter reports requests that the local bound
# behind it then refused: those are not taken from the budget).
# Returns {kind (0 keep, 1 grant, 2 deny, 3 abandon), tokens, serial, unleased}.
QUOTA_LUA = r"""
local now = tonumber(ARGV[1])
local me = 'h:' .. ARGV[2]
local allowed = tonumber(ARGV[3])
local denied = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local period = tonumber(ARGV[6])
local fixed = ARGV[7] == '1'
local expiry = tonumber(ARGV[8])
local abandon_after = tonumber(ARGV[9])
local bound = tonumber(ARGV[10])

local raw = redis.call('HGETALL', KEYS[1])
local g, t = nil, nil
local holders = {}
for i = 1, #raw, 2 do
  local f, v = raw[i], raw[i + 1]
  if f == 'g' then g = tonumber(v)
  elseif f == 't' then t = tonumber(v)
  else
    local c, u, d, seen, serial, active, b =
      string.match(v, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
    if c then
      holders[f] = {c = tonumber(c), u = tonumber(u), d = tonumber(d), seen = tonumber(seen),
                    serial = tonumber(serial), active = tonumber(active), b = tonumber(b)}
    end
  end
end
if g == nil or t == nil then
  g = limit
  if fixed then t = math.floor(now / period) else t = now end
end
-- A holder silent past the expiry has lost its lease in its Envoy: the rest comes back.
for f, h in pairs(holders) do
  if f ~= me and now - h.seen > expiry then
    g = g + math.max(0, h.c - h.u)
    holders[f] = nil
    redis.call('HDEL', KEYS[1], f)
  end
end
local h = holders[me]
if h == nil then
  h = {c = 0, u = 0, d = 0, seen = now, serial = 0, active = now, b = bound}
  holders[me] = h
end
-- What the Envoy admitted is spent from its lease; beyond the lease, from the budget, as far
-- as its local bound can have let it through (the rest that filter refused).
local b = math.min(bound, h.b + math.max(0, now - h.seen) * limit / period)
h.u = h.u + allowed
local over = math.max(0, h.u - h.c)
local leased = allowed - over
local unleased = math.min(over, math.max(0, math.floor(b - leased)))
h.b = math.max(0, b - leased - unleased)
g = g - unleased
if h.u > h.c then h.u = h.c end
h.d = allowed + denied
if h.d > 0 then h.active = math.max(h.active, now) end
local held = 0
for _, x in pairs(holders) do held = held + (x.c - x.u) end
-- Time moves forward only: a wardgate whose clock is behind another's (workers, replicas)
-- neither starts an older window again nor refills what a later clock already did.
if fixed then
  local w = math.floor(now / period)
  if w > t then
    g = limit - held
    t = w
  end
elseif now > t then
  g = g + (now - t) * limit / period
  t = now
end
if g + held > limit then g = limit - held end

local function save(kind, tokens, serial)
  redis.call('HSET', KEYS[1], 'g', tostring(g), 't', tostring(t))
  redis.call('PEXPIRE', KEYS[1], 2 * math.max(period, expiry + abandon_after))
  return {kind, tokens, serial, unleased}
end

local left = h.c - h.u
if now - h.active >= abandon_after then
  g = g + left
  redis.call('HDEL', KEYS[1], me)
  return save(3, 0, 0)
end
-- Its fair share of the budget in play, by demand in the last report (one each at least).
local weights = 0
for _, x in pairs(holders) do weights = weights + x.d + 1 end
local target = math.floor((math.max(0, g) + held) * (h.d + 1) / weights)
local kind = 0
if left <= 0 or denied > 0 then
  g = g + left
  local new = math.min(math.max(target, 1), math.floor(g))
  h.u = 0
  if new >= 1 then
    g = g - new
    h.c = new
    h.serial = h.serial + 1
    kind = 1
  else
    h.c = 0
    kind = 2
  end
elseif left > target + math.floor(target / 2) + 1 then
  -- Far more than its share: it keeps its share, the rest goes back to the budget.
  local new = math.max(1, target)
  g = g + (left - new)
  h.c = new
  h.u = 0
  h.serial = h.serial + 1
  kind = 1
end
h.seen = math.max(h.seen, now)
redis.call('HSET', KEYS[1], me, string.format('%d %d %d %d %d %d %s',
  h.c, h.u, h.d, h.seen, h.serial, h.active, tostring(h.b)))
return save(kind, h.c, h.serial)
"""
