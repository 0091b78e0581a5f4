"""Typed errors of the monitoring package (protocol errors, so the CLI prints one red line)."""

from __future__ import annotations

from protocols.errors import ProtocolError


class MonitoringError(ProtocolError):
    """A monitoring operation cannot proceed; the message never names an enterprise's data."""


class GrantRequired(MonitoringError):
    """An enterprise may be watched only under a valid ``monitoring`` grant for this lender."""
