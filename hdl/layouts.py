"""Gateware views of the wire format, derived from ``host/wire/protocol.py``.

There is one definition of the byte layout: the ``struct`` formats and
``Control.OFFSETS`` in ``host/wire/protocol.py``. Every layout here is computed
from them (field sizes from the format characters, offsets checked against
``OFFSETS`` where the codec names them), so a change to the codec either
shows up here or fails at import. All layouts are little-endian byte images:
byte ``k`` of a frame part is bits ``8k..8k+7`` of the view.
"""

import dataclasses
import struct

from amaranth.lib import data

from ..host.wire import protocol

__all__ = ["Header", "Control", "Ack", "Hello", "JnlRd", "Release", "ReleaseAt", "Load",
           "LoadRing", "EngineStatus", "byte_offsets"]

_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8}


def _struct_layout(fmt: struct.Struct, names, offsets=None) -> data.StructLayout:
    """A StructLayout with one unsigned field per ``fmt`` item, in order."""
    spec = fmt.format.lstrip("<")
    fields = []
    i = 0
    while i < len(spec):
        # "32s" style counts
        j = i
        while spec[j].isdigit():
            j += 1
        count = int(spec[i:j]) if j > i else 1
        code = spec[j]
        if code == "s":
            fields.append(count)
        else:
            fields.extend([_SIZES[code]] * count)
        i = j + 1
    names = list(names)
    if len(names) != len(fields):
        raise ValueError(f"{len(names)} names for {len(fields)} fields of {fmt.format!r}")
    members, offset = {}, 0
    for name, size in zip(names, fields):
        if offsets is not None and offsets.get(name, offset) != offset:
            raise ValueError(f"field {name!r} at byte {offset}, codec says {offsets[name]}")
        members[name] = 8 * size
        offset += size
    if offset != fmt.size:
        raise ValueError(f"layout of {offset} bytes for a {fmt.size}-byte struct")
    return data.StructLayout(members)


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


#: Frame header, 16 bytes (docs/protocol.md "Frame").
Header = _struct_layout(struct.Struct(protocol._HEADER.format + "I"),
                        ["magic", "version", "type", "flags", "length", "hcrc"])
#: Control data, 64 bytes (docs/protocol.md "Control data").
Control = _struct_layout(protocol.Control.STRUCT, _names(protocol.Control),
                         protocol.Control.OFFSETS)
#: ACK/NAK body, 32 bytes.
Ack = _struct_layout(protocol.Ack.STRUCT, _names(protocol.Ack) + ["reserved"])
#: HELLO body, 80 bytes (ROLE, reserved, GROUP, EPOCH, LAST_SEQ, GRNAME, SITE).
Hello = _struct_layout(protocol.Hello.STRUCT,
                       ["role", "reserved", "group", "epoch", "last_seq", "grname", "site"])
#: JNLRD body, 16 bytes.
JnlRd = _struct_layout(protocol.JnlRd.STRUCT, _names(protocol.JnlRd) + ["reserved"])
#: RELEASE body on a data ring, 8 bytes: UPTO.
Release = _struct_layout(protocol.Release.STRUCT, ["upto"])
#: RELEASE body on a descriptor ring, 16 bytes: UPTO, JOPTR (after the release).
ReleaseAt = _struct_layout(protocol.Release.AT_STRUCT, _names(protocol.Release))
#: LOAD body, 32 bytes: SEQ, TIME, PTR, EPOCH, FLAGS (wire order, not the dataclass order).
Load = _struct_layout(protocol.Load.STRUCT, ["seq", "time", "ptr", "epoch", "flags"])
#: LOAD body with RING, 40 bytes: the 32 above, then the ring SIZE.
LoadRing = _struct_layout(protocol.Load.RING_STRUCT, ["seq", "time", "ptr", "epoch", "flags",
                                                      "size"])
#: STATUS_RESP body, 80 bytes.
EngineStatus = _struct_layout(protocol.EngineStatus.STRUCT, _names(protocol.EngineStatus))


def byte_offsets(layout: data.StructLayout) -> dict[str, tuple[int, int]]:
    """``{field: (byte offset, byte size)}`` of a layout from this module."""
    return {name: (f.offset // 8, f.width // 8) for name, f in layout}
