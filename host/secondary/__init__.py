"""The secondary site: verify, stage and restore journals to SVOLs in SEQ# order."""

from .site import RestoreGroup, RestoreState, Secondary

__all__ = ["RestoreGroup", "RestoreState", "Secondary"]
