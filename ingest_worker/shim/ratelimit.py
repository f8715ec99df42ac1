"""Token-bucket rate limiting per API token. Pure: the clock is passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    """`capacity` tokens, refilled at `rate_per_s`; a request spends its cost (one token per
    event)."""

    capacity: float
    rate_per_s: float
    tokens: float
    updated_s: float

    def take(self, now_s: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens; return 0 if allowed, else seconds until it would be."""
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate_per_s


class RateLimiter:
    """One bucket per key (a token id), created full on first use."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self._buckets: dict[object, Bucket] = {}

    def check(self, key: object, now_s: float, cost: float = 1.0) -> int:
        """0 if allowed; else the whole seconds to wait (for `Retry-After`)."""
        if self.rate_per_s <= 0:
            return 0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = Bucket(self.burst, self.rate_per_s, self.burst, now_s)
            self._buckets[key] = bucket
        wait_s = bucket.take(now_s, min(cost, self.burst))
        return math.ceil(wait_s) if wait_s > 0 else 0

    def check_rest(self, key: object, now_s: float, weight: float) -> int:
        """Like `check`, for the rest of a request weighing `weight` tokens whose first one
        `check` took: a full bucket pays for any weight, so no request is refused forever."""
        rest = min(weight, self.burst) - 1.0
        return self.check(key, now_s, rest) if rest > 0 else 0
