"""RedisTicks: which node runs each tick of a scheduled function, decided in Redis.

Two keys per function, under ``<cluster>:schedule:<function>``:

- ``:last`` — the latest tick claimed (Unix milliseconds). A node claims a tick only if it is
  later than that, so each tick runs once for the whole cluster, and a node whose clock or
  timer lags behind cannot run a tick that another node already ran. The tick's time is the
  claim, not the moment a node asks: nodes agree however late their timers fire.
- ``:running`` — the holder of the run in progress (``<node>:<tick>``), with a lease the
  holder renews while the run goes on. A tick that comes while it exists is skipped (no
  overlap). If the holder dies mid-run, nobody renews it: it expires within one lease, and
  the next tick after that runs as usual; the interrupted run is not run again.

Claiming, renewing and releasing are each one Lua script, atomic in Redis.
"""

from __future__ import annotations

import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..scheduler import Claim

__all__ = ["RedisTicks"]

log = logging.getLogger("laf_py")

LAST_TICK_LIFETIME_MS = 24 * 3600 * 1000  # how long a claimed tick is remembered

# KEYS: last, running. ARGV: tick (ms), holder, lease (ms), last lifetime (ms).
# Returns 1: run it; 0: another node claimed this tick (or a later one); 2: skipped, a run
# is still going.
_CLAIM = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: running. ARGV: holder, lease (ms). 1 if still ours and extended, else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: running. ARGV: holder. Deletes the marker only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_CLAIMS = {1: Claim.RUN, 0: Claim.TAKEN, 2: Claim.BUSY}


class RedisTicks:
    """Tick claims shared by every node of a cluster (every worker and machine)."""

    def __init__(self, url: str, prefix: str, node_id: str, lease: float) -> None:
        # Seconds the "running" marker lasts; its holder renews it every lease / 3.
        self.lease: float | None = lease
        self._lease_ms = _ms(lease)
        self._prefix = prefix
        self._node_id = node_id
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._failing = False

    async def claim(self, name: str, tick: float) -> Claim:
        """Claim ``tick`` of function ``name``; raises if Redis cannot be reached."""
        keys = self._keys(name)
        try:
            answer = await self._redis.eval(
                _CLAIM,
                2,
                *keys,
                _ms(tick),
                self._holder(tick),
                self._lease_ms,
                LAST_TICK_LIFETIME_MS,
            )
        except (RedisError, OSError) as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "cannot claim scheduled runs in Redis (%s): ticks are skipped until it "
                    "is back, so that none runs twice",
                    exc,
                )
            raise
        if self._failing:
            self._failing = False
            log.warning("Redis is back: scheduled runs go on")
        return _CLAIMS[int(answer)]

    async def keep(self, name: str, tick: float) -> bool:
        """Extend this node's lease on the run of ``tick``; False if it is no longer ours."""
        answer = await self._redis.eval(
            _RENEW, 1, self._keys(name)[1], self._holder(tick), self._lease_ms
        )
        return bool(answer)

    async def finished(self, name: str, tick: float) -> None:
        await self._redis.eval(_RELEASE, 1, self._keys(name)[1], self._holder(tick))

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    def _keys(self, name: str) -> tuple[str, str]:
        base = f"{self._prefix}:schedule:{name}"
        return f"{base}:last", f"{base}:running"

    def _holder(self, tick: float) -> str:
        return f"{self._node_id}:{_ms(tick)}"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
