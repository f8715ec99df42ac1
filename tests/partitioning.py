"""Kafka's Java default partitioner for keyed records, written out from its source
(`Utils.murmur2`, `toPositive(hash) % partitions`): the reference our producers must match."""

from __future__ import annotations

M32 = 0xFFFFFFFF
SEED = 0x9747B28C
M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """Java's `Utils.murmur2(data)`, as a signed 32-bit int."""
    length = len(data)
    h = (SEED ^ length) & M32
    for i in range(0, length - length % 4, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * M) & M32
        k = ((k ^ (k >> 24)) * M) & M32
        h = ((h * M) & M32) ^ k
    tail = data[length - length % 4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * M) & M32
    h = ((h ^ (h >> 13)) * M) & M32
    h ^= h >> 15
    return h - (1 << 32) if h >= 1 << 31 else h


def java_partition(key: bytes, partitions: int) -> int:
    """The partition a Java producer with the default partitioner picks for this key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
