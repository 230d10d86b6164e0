"""NBD server: hosts reach PVOLs (and the secondary's read-only SVOLs) over NBD.

``protocol`` is the sans-I/O core, ``export`` the storage interface with a
file-backed implementation, ``server`` the asyncio adapter.  See docs/nbd.md.
"""

from .export import Export, ExportError, FileExport
from .server import NbdServer

__all__ = ["Export", "ExportError", "FileExport", "NbdServer"]
