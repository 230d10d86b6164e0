"""The relay site (the patent's intermediary): dedup, engine stamping, durable journal, forwarding."""

from .site import GroupFault, Relay, RelayError, RelayGroup

__all__ = ["GroupFault", "Relay", "RelayError", "RelayGroup"]
