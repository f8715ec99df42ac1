"""Shared by every process: the contracts and the pure per-record logic."""
