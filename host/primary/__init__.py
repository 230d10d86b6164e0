"""The primary site: PVOLs, the host write path, the write log, the link to the relay."""

from .site import GroupSuspended, LocalIOError, MasterGroup, Primary

__all__ = ["GroupSuspended", "LocalIOError", "MasterGroup", "Primary"]
