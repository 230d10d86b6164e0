"""JournalEngine parameters are checked at construction, naming the bad value."""

import pytest

from tricopy.hdl.engine import JournalEngine


@pytest.mark.parametrize("kwargs, text", [
    (dict(data_width=16), "16"),
    (dict(ring_size=1000), "1000"),
    (dict(ring_size=64), "64"),
    (dict(site="model"), "'model'"),
    (dict(max_ring_bits=7), "7"),
    (dict(max_ring_bits=41), "41"),
    (dict(ring_size=1024, memory=0, max_ring_bits=9), "1024"),
    (dict(desc_batch=0), "0"),
    (dict(desc_batch=65), "65"),
    (dict(desc_batch=True), "True"),
])
def test_bad_parameters(kwargs, text):
    with pytest.raises(ValueError, match=text):
        JournalEngine(**kwargs)


def test_good_parameters():
    e = JournalEngine(8, 128, 12_000_000, site="board")
    assert (e.ring_bits, e.site) == (7, "board")
    assert e.rx.payload.shape().width == 8


def test_width_32():
    """At width 32 the streams carry a beat of 4 bytes and the ring holds
    words of 4 bytes: one beat into the ring per cycle."""
    e = JournalEngine(32, 1024)
    assert (e.rx.payload.shape().width, e.tx.payload.shape().width) == (32, 32)
    assert (e._ring.w_data.shape().width, e._ring.w_addr.shape().width) == (32, 8)


@pytest.mark.parametrize("kwargs, text", [
    (dict(depth=1024, data_width=12), "12"),
    (dict(depth=2, data_width=32), "2"),
])
def test_ring_memory_parameters(kwargs, text):
    from tricopy.hdl.ring import RingMemory
    with pytest.raises(ValueError, match=text):
        RingMemory(**kwargs)


def test_ring_factory_ports_checked():
    """A ring factory whose component lacks the ring ports is refused,
    naming what it got."""
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Narrow(wiring.Component):
        w_addr: In(4)
        w_data: In(8)
        w_en: In(1)
        r_addr: In(4)
        r_data: Out(8)
        r_en: In(1)

        def __init__(self, depth):
            super().__init__()

        def elaborate(self, platform):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match=r"ring\(128\) must have the ports.*In\(4\)"):
        JournalEngine(8, 128, ring=Narrow)


def test_status_ports():
    e = JournalEngine(8, 256)
    assert (e.full.shape().width, e.nak.shape().width) == (1, 1)
