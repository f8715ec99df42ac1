"""The token bucket: costs, refill, Retry-After, and requests weighing more than one token."""

from __future__ import annotations

from ingest_worker.shim.ratelimit import RateLimiter


def test_burst_then_refill() -> None:
    """A full bucket pays `burst` requests at once, then one per 1/rate seconds."""
    limiter = RateLimiter(rate_per_s=2.0, burst=3.0)
    assert [limiter.check("t", 0.0) for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.check("t", 0.5) == 0
    assert limiter.check("t", 0.5) == 1


def test_rest_of_a_weighted_request_is_charged() -> None:
    """`check_rest` spends weight - 1 more tokens; what it cannot pay is a wait in whole
    seconds, and it spends nothing then."""
    limiter = RateLimiter(rate_per_s=0.5, burst=5.0)
    assert limiter.check("t", 0.0) == 0
    assert limiter.check_rest("t", 0.0, 3) == 0
    assert limiter.check("t", 0.0) == 0
    assert limiter.check_rest("t", 0.0, 3) == 2
    assert limiter.check("t", 0.0) == 0
    assert limiter.check("t", 0.0) == 2


def test_weight_of_one_costs_nothing_more() -> None:
    """A one-item request is fully paid by `check`."""
    limiter = RateLimiter(rate_per_s=0.001, burst=1.0)
    assert limiter.check("t", 0.0) == 0
    assert limiter.check_rest("t", 0.0, 1) == 0


def test_weight_over_the_burst_passes_on_a_full_bucket() -> None:
    """A request heavier than the whole bucket costs the whole bucket, so it passes once the
    bucket is full instead of never."""
    limiter = RateLimiter(rate_per_s=1.0, burst=4.0)
    assert limiter.check("t", 0.0) == 0
    assert limiter.check_rest("t", 0.0, 1000) == 0
    assert limiter.check("t", 0.0) == 1
    assert limiter.check("u", 0.0) == 0


def test_zero_rate_turns_it_off() -> None:
    """With rate 0 every request passes, whatever it weighs."""
    limiter = RateLimiter(rate_per_s=0.0, burst=0.0)
    assert [limiter.check("t", 0.0) for _ in range(10)] == [0] * 10
    assert limiter.check_rest("t", 0.0, 1000) == 0
