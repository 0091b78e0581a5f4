"""Continuous monitoring and early warning on the lender's side.

A lender keeps a watchlist of its borrowers (each entry holds the enterprise's ``monitoring``
grant), re-scores the whole list every month through the encrypted scoring path, keeps the
decrypted history in its own SQLite file, raises alerts on rules it configures, and watches the
stability of the score distribution. Nothing here runs at the coordinator; scores never leave the
lender's state directory except as alerts it sends to its own endpoints.
"""

from participants.monitoring.errors import GrantRequired, MonitoringError

__all__ = ["GrantRequired", "MonitoringError"]
