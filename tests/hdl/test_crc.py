"""CRC32C gateware against the host codec's crc32c (Amaranth simulator)."""

import contextlib
import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from tricopy.hdl.crc import CRC32C, POLY, byte_columns, byte_table, crc32c_step
from tricopy.hdl import layouts
from tricopy.host.wire import protocol


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("width", [8, 32])
def test_crc_matches_codec(width, columns):
    dut = CRC32C(width)
    nbytes = width // 8
    rng = random.Random(width)
    messages = [b"123456789", b"", b"\x00", bytes(range(256))]
    messages += [rng.randbytes(rng.randrange(1, 40)) for _ in range(20)]
    results = []

    async def bench(ctx):
        for msg in messages:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            for i in range(0, len(msg), nbytes):
                word = msg[i:i + nbytes]
                ctx.set(dut.en, 1)
                ctx.set(dut.count, len(word))
                # Bytes above count are garbage on purpose: they must be ignored.
                ctx.set(dut.data, int.from_bytes(word.ljust(nbytes, b"\xa5"), "little"))
                await ctx.tick()
            ctx.set(dut.en, 0)
            results.append(ctx.get(dut.crc))

    # the component elaborates when the simulator is built: the spelling
    # in force then is the one simulated
    with byte_columns() if columns else contextlib.nullcontext():
        sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert results == [protocol.crc32c(m) for m in messages]
    assert results[0] == 0xE3069283


def _reference_step(reg: int, data: bytes) -> int:
    """The CRC register after ``data`` from ``reg``, bit by bit."""
    for byte in data:
        reg ^= byte
        for _ in range(8):
            reg = (reg >> 1) ^ (POLY if reg & 1 else 0)
    return reg


def test_byte_table_is_the_bytewise_crc_table():
    """Word ``x`` of the columns' table (hdl/crc.py, ``byte_table``) is the
    register after the byte ``x`` from 0, bit by bit: the table of the
    byte-wise CRC."""
    table = byte_table()
    for x in range(256):
        assert (table >> (32 * x)) & 0xFFFF_FFFF == _reference_step(0, bytes([x])), x


@pytest.mark.parametrize("nbytes", [1, 2, 4])
def test_byte_columns_equal_rows(nbytes):
    """The two spellings of ``crc32c_step`` (hdl/crc.py) give the same
    register. Both are XORs of input bits (linear over GF(2)), so equal on
    the zero input and on each single input bit means equal on every input;
    random inputs and the bitwise reference check the values themselves."""
    state, data = Signal(32), Signal(8 * nbytes)
    rows_value = crc32c_step(state, data, nbytes)
    with byte_columns():
        columns_value = crc32c_step(state, data, nbytes)
    # the block did change the spelling (else this compares rows with rows)
    assert repr(columns_value) != repr(rows_value)
    for value, (got_rows, got_columns) in _run_step(state, data, nbytes,
                                                    [rows_value, columns_value]):
        want = _reference_step(value & 0xFFFF_FFFF, (value >> 32).to_bytes(nbytes, "little"))
        assert (got_rows, got_columns) == (want, want), hex(value)


def _run_step(state, data, nbytes: int, values) -> list:
    """Each expression of ``values`` over state/data inputs of single bits
    and random words: (input, [the expressions' values]) per input."""
    m = Module()
    outs = [Signal(32) for _ in values]
    m.d.comb += [o.eq(v) for o, v in zip(outs, values)]
    rng = random.Random(nbytes)
    inputs = [0] + [1 << k for k in range(32 + 8 * nbytes)]
    inputs += [rng.getrandbits(32 + 8 * nbytes) for _ in range(20)]
    seen = []

    async def bench(ctx):
        for value in inputs:
            ctx.set(state, value & 0xFFFF_FFFF)
            ctx.set(data, value >> 32)
            seen.append((value, [ctx.get(o) for o in outs]))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return seen


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("nbytes", [1, 4])
def test_step_is_state_term_xor_data_term(nbytes, columns):
    """``crc32c_state_term(s) ^ crc32c_data_term(d)`` is ``crc32c_step(s,
    d)`` (the width-32 ingress computes the data's share a cycle ahead,
    hdl/engine.py), in both spellings, on single bits and random inputs."""
    from tricopy.hdl.crc import crc32c_data_term, crc32c_state_term

    state, data = Signal(32), Signal(8 * nbytes)
    with byte_columns() if columns else contextlib.nullcontext():
        split_value = crc32c_state_term(state, nbytes) ^ crc32c_data_term(data, nbytes)
    for value, (got,) in _run_step(state, data, nbytes, [split_value]):
        want = _reference_step(value & 0xFFFF_FFFF, (value >> 32).to_bytes(nbytes, "little"))
        assert got == want, hex(value)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_pad_lanes_adds_the_zero_lanes(n):
    """``crc32c_pad_lanes`` (hdl/lanes.py) is the register after ``4 - n``
    zero bytes more: the width-32 ingress compares its CRC registers, which
    took the last beat whole with those lanes zero, with the received CRC
    padded so."""
    from tricopy.hdl.lanes import crc32c_pad_lanes

    state, padded = Signal(32), Signal(32)
    m = Module()
    m.d.comb += padded.eq(crc32c_pad_lanes(state, n, 4))
    rng = random.Random(n)
    values = [0, 1 << 31] + [rng.getrandbits(32) for _ in range(16)]
    seen = []

    async def bench(ctx):
        for value in values:
            ctx.set(state, value)
            seen.append((value, ctx.get(padded)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    for value, got_padded in seen:
        # W - n zero bytes after the low n: the bitwise step on zeros
        assert got_padded == _reference_step(value, bytes(4 - n)), (n, hex(value))


def test_const_state_after_the_crc_itself():
    """The width-32 responder steps its CRC over a read-out's CCRC beat
    (the register itself, final-xored) to ``crc32c_const_state(CRC_INIT,
    4)``: over four bytes of the register the CRC is that constant
    whatever the register held."""
    from tricopy.hdl.crc import CRC_INIT, crc32c_const_state

    rng = random.Random(4)
    for value in [0, CRC_INIT, 1 << 31] + [rng.getrandbits(32) for _ in range(16)]:
        sent = (value ^ CRC_INIT).to_bytes(4, "little")
        assert _reference_step(value, sent) == crc32c_const_state(CRC_INIT, 4), hex(value)
    assert crc32c_const_state(CRC_INIT, 4) == 0xB798B438
    assert crc32c_const_state(0, 3) == 0


def test_bad_width_names_value():
    with pytest.raises(ValueError, match="12"):
        CRC32C(12)


def test_layouts_match_codec():
    # One definition: offsets and sizes here come from host/wire/protocol.py.
    assert layouts.byte_offsets(layouts.Control)["kind"] == (protocol.Control.OFFSETS["kind"], 1)
    assert layouts.Control.size == 8 * protocol.CONTROL_SIZE
    assert layouts.Header.size == 8 * protocol.HEADER_SIZE
    assert layouts.Ack.size == 8 * protocol.Ack.SIZE
    assert layouts.EngineStatus.size == 8 * protocol.EngineStatus.SIZE
    assert layouts.byte_offsets(layouts.EngineStatus)["wrap_at"] == (72, 8)
    assert layouts.byte_offsets(layouts.Load)["flags"] == (28, 4)
    assert layouts.Load.size == 8 * protocol.Load.SIZE
