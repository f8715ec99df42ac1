"""API tokens: random, shown once, stored as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "igw_"


def generate() -> str:
    """A new token: a recognisable prefix and 256 random bits."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> bytes:
    """What the database stores and the cache is keyed by."""
    return hashlib.sha256(token.encode()).digest()


def display_prefix(token: str) -> str:
    """The first characters, safe to show in listings to tell tokens apart."""
    return token[: len(PREFIX) + 6]
