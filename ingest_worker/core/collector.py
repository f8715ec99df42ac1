"""The cyclic garbage collector's settings for a long-running process. Pure of I/O.

A worker or API process allocates tens of container objects per event, nearly all freed by
reference counting as soon as the event is done. With Python's default thresholds (a young
collection every 700 net allocations) the collector still ran hundreds of times per batch and
walked what the batch held each time: in a profile of the worker (6 partitions, event store
on), 11.4 µs of its 73 µs of CPU per event went to collections, 3.0 µs with a threshold of
20,000 (60 µs in all). But a batch of 2,000 events still passed 20,000 net allocations
about twice while it was processed: each collection walked the live batch and moved it to
the middle generation, to be walked again there. Timed with `gc.callbacks` over 150,000
events: 0.7-0.9 s in collections at 20,000, 0.03-0.05 s at 100,000, which a batch's count
does not reach before its objects are freed. Four alternated pairs of runs,
store on: 100,000 ran 10-25% faster, 5-13 µs of CPU per event less. What start-up made
(modules, compiled schemas, the clients) is frozen out of every later collection.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 100_000  # net container allocations between young collections (default 700)


def settle_after_start(young: int = YOUNG_THRESHOLD) -> None:
    """Call once the process has started: freeze what exists now, collect the young
    generation less often (the older generations keep their default ratios)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
