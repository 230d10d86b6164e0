"""CRC32C (Castagnoli) for the gateware, one data word per clock.

The CRC is linear over GF(2), so the next state is a fixed XOR of state bits
and data bits. :func:`crc32c_step` derives that XOR matrix at elaboration
time by running the bitwise reflected algorithm on *symbolic* bits (sets of
input indices), so there is no table to get wrong and any byte-multiple
width works. Parameters as in docs/protocol.md: reflected polynomial
``0x82F63B78``, init ``0xFFFFFFFF``, final xor ``0xFFFFFFFF``.

The same linear map has a second spelling, by byte columns (the byte-wise
table CRC with its table written as XORs of eight constants): inside
:func:`byte_columns` the networks are written that way. Synthesis flattens
either to the same XOR function, and the boards keep the rows it has been
timed with; the Verilator harness (``sim/build.py``) builds with columns,
which it computes in a few word operations per byte instead of 32 masked
parities (docs/sim.md, "Harness speed"). ``tests/hdl/test_crc.py`` holds
the two spellings equal.
"""

from functools import lru_cache

from amaranth.hdl import Cat, Const, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .switch import Switch

__all__ = ["POLY", "CRC_INIT", "crc32c_step", "crc32c_state_term", "crc32c_data_term",
           "crc32c_const_state",
           "CRC32C", "byte_columns", "byte_table"]

#: CRC32C polynomial, bit-reflected form.
POLY = 0x82F63B78
#: Register value before the first byte (and the final xor).
CRC_INIT = 0xFFFF_FFFF


@lru_cache(maxsize=None)
def _matrix(nbytes: int) -> tuple[tuple[frozenset, ...], ...]:
    """For each of the 32 next-state bits, the inputs it XORs.

    Inputs are numbered 0..31 for the state bits and 32+i for data bit i
    (data byte 0 first on the wire, in bits 0..7).
    """
    state = [frozenset({i}) for i in range(32)]
    for b in range(nbytes):
        for i in range(8):
            state[i] = state[i] ^ frozenset({32 + 8 * b + i})
        for _ in range(8):
            low = state[0]
            state = [state[i + 1] if i < 31 else frozenset() for i in range(32)]
            state = [s ^ low if (POLY >> i) & 1 else s for i, s in enumerate(state)]
    return tuple(state)


_COLUMNS = Switch("tricopy_crc_columns")


def byte_columns():
    """Within this block :func:`crc32c_step` writes its networks by byte
    columns (module docstring): for a simulator, not for synthesis."""
    return _COLUMNS.on()


@lru_cache(maxsize=None)
def _byte_columns() -> tuple[int, ...]:
    """What data bit ``i`` of a byte adds to the register after the byte's
    eight steps (the table entries ``T[1 << i]`` of the byte-wise CRC)."""
    columns = []
    for i in range(8):
        reg = 1 << i
        for _ in range(8):
            reg = (reg >> 1) ^ (POLY if reg & 1 else 0)
        columns.append(reg)
    return tuple(columns)


def crc32c_step(state, data, nbytes: int):
    """Expression for the CRC register after ``nbytes`` bytes of ``data``.

    ``state`` is the 32-bit register (not final-xored); ``data`` holds the
    bytes little-endian (first byte in bits 0..7).
    """
    if not 1 <= nbytes:
        raise ValueError(f"nbytes must be at least 1, not {nbytes!r}")
    if _COLUMNS:
        return _step_columns(Value.cast(state)[:32], Value.cast(data), nbytes)
    return _xor_rows(Cat(state[:32], data[:8 * nbytes]),
                     [sorted(terms) for terms in _matrix(nbytes)])


def _terms(nbytes: int, data: bool):
    """``_matrix`` cut in two: each next-state bit's state terms (inputs
    0..31) or its data terms (32..), the latter renumbered from 0."""
    if data:
        return tuple(tuple(sorted(t - 32 for t in terms if t >= 32)) for terms in _matrix(nbytes))
    return tuple(tuple(sorted(t for t in terms if t < 32)) for terms in _matrix(nbytes))


def _xor_rows(inputs, rows):
    bits = []
    for terms in rows:
        bit = Const(0, 1)
        for t in terms:
            bit = bit ^ inputs[t]
        bits.append(bit)
    return Cat(*bits)


def crc32c_state_term(state, nbytes: int):
    """The state's share of ``crc32c_step``: the register after ``nbytes``
    zero bytes. The CRC being linear, ``crc32c_step(s, d, n)`` is
    ``crc32c_state_term(s, n) ^ crc32c_data_term(d, n)``: the data's share
    can be computed a cycle ahead into a register, leaving the loop on the
    CRC register one matrix and one XOR (docs/hardware.md, "Timing closure,
    thirteenth step")."""
    if not 1 <= nbytes:
        raise ValueError(f"nbytes must be at least 1, not {nbytes!r}")
    if _COLUMNS:
        return _step_columns(Value.cast(state)[:32], Const(0, 8 * nbytes), nbytes)
    return _xor_rows(Value.cast(state)[:32], _terms(nbytes, False))


def crc32c_const_state(state: int, nbytes: int) -> int:
    """:func:`crc32c_state_term` of a constant register, as an integer."""
    out = 0
    for i, terms in enumerate(_terms(nbytes, False)):
        out |= (sum((state >> t) & 1 for t in terms) & 1) << i
    return out


def crc32c_data_term(data, nbytes: int):
    """The data's share of ``crc32c_step`` (from a register of 0): see
    :func:`crc32c_state_term`."""
    if not 1 <= nbytes:
        raise ValueError(f"nbytes must be at least 1, not {nbytes!r}")
    if _COLUMNS:
        return _step_columns(Const(0, 32), Value.cast(data), nbytes)
    return _xor_rows(Value.cast(data)[:8 * nbytes], _terms(nbytes, True))


def _step_columns(reg, data, nbytes: int):
    """``crc32c_step`` by bytes: ``(reg >> 8) ^ T[reg[:8] ^ byte]``, the
    byte-wise table CRC. ``T`` is one 8192-bit constant (:func:`byte_table`)
    and ``T[x]`` its 32-bit word ``x``: Amaranth writes that as a shift of
    the constant, which ``sim/build.py`` rewrites to a part-select so that
    Verilator reads it as one table lookup (a shift of 8192 bits each cycle
    otherwise)."""
    table = Const(byte_table(), 256 * 32)
    for b in range(nbytes):
        x = reg[:8] ^ data[8 * b:8 * b + 8]
        reg = (reg[8:] ^ table.word_select(x, 32))[:32]
    return reg


@lru_cache(maxsize=None)
def byte_table() -> int:
    """The byte-wise CRC's table as one integer, entry ``x`` in bits
    ``32 * x`` up: ``T[x]`` is the XOR of the columns (``_byte_columns``)
    of the bits set in ``x``, the register's change after the byte ``x``."""
    table = 0
    for x in range(256):
        entry = 0
        for i, column in enumerate(_byte_columns()):
            if (x >> i) & 1:
                entry ^= column
        table |= entry << (32 * x)
    return table


class CRC32C(wiring.Component):
    """CRC32C over a ``data_width``-bit word per clock.

    ``clear`` restarts the CRC (it wins over ``en``). With ``en`` the low
    ``count`` bytes of ``data`` are added (``count`` = 1..width/8, so the
    last word of a message may be partial; bytes above ``count`` are
    ignored). ``crc`` is the finished value (final xor applied) of
    everything added since the last clear, one clock after the last word.
    """

    def __init__(self, data_width: int = 8):
        if not isinstance(data_width, int) or data_width < 8 or data_width % 8:
            raise ValueError(f"data_width must be a positive multiple of 8, not {data_width!r}")
        self.data_width = data_width
        self.nbytes = data_width // 8
        super().__init__({
            "clear": In(1),
            "en": In(1),
            "data": In(data_width),
            "count": In(range(1, self.nbytes + 1), init=self.nbytes),
            "crc": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        reg = Signal(32, init=CRC_INIT)
        with m.If(self.clear):
            m.d.sync += reg.eq(CRC_INIT)
        with m.Elif(self.en):
            with m.Switch(self.count):
                for n in range(1, self.nbytes + 1):
                    with m.Case(n):
                        m.d.sync += reg.eq(crc32c_step(reg, self.data, n))
        m.d.comb += self.crc.eq(reg ^ CRC_INIT)
        return m
