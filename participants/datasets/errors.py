"""Errors of the real-data loaders (a ProtocolError subclass so the CLI prints one red line)."""

from __future__ import annotations

from protocols.errors import DataError


class DatasetError(DataError):
    """A public data set is missing, unreadable or not what its SOURCE.md documents."""
