"""Ingestion worker for integration events."""

__version__ = "0.1.0"
