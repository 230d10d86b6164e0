"""Helpers for beats of W bytes (data widths above 8, docs/protocol.md "Wide links").

A frame on a wide link ends inside its last beat: the CRCs take the low
``n`` bytes of that beat and the lanes above are masked. ``n`` is a value
1..W; both helpers are a short multiplexer over the W constant cases.
"""

from amaranth.hdl import Const, Mux

from .crc import crc32c_state_term, crc32c_step

__all__ = ["crc32c_lanes", "crc32c_pad_lanes", "lane_mask", "word_address"]


def word_address(byte_address, W: int):
    """The ring word holding ``byte_address`` (a multiple of W): the ring has
    words of one beat."""
    return byte_address if W == 1 else byte_address[W.bit_length() - 1:]


def crc32c_lanes(state, data, n, W: int):
    """The CRC register after the low ``n`` bytes (a value 1..W) of a W-byte beat."""
    if W == 1:
        return crc32c_step(state, data, 1)
    out = crc32c_step(state, data, W)
    for k in range(W - 1, 0, -1):
        out = Mux(n == k, crc32c_step(state, data, k), out)
    return out


def crc32c_pad_lanes(state, n, W: int):
    """From the register after the low ``n`` bytes of a beat, the register
    after the whole beat with its lanes from ``n`` on zero (``W - n`` zero
    bytes more). A received CRC can so be compared with a register that
    took the last beat whole, masked: the correction on the received side."""
    out = state
    for k in range(W - 1, 0, -1):
        out = Mux(n == k, crc32c_state_term(state, W - k), out)
    return out


def lane_mask(n, W: int):
    """Ones in the low ``n`` bytes (a value 1..W) of a W-byte beat."""
    out = Const((1 << 8 * W) - 1, 8 * W)
    for k in range(W - 1, 0, -1):
        out = Mux(n == k, (1 << 8 * k) - 1, out)
    return out
