"""JournalEngine parameters are checked at construction, naming the bad value."""

import pytest

from tricopy.hdl.engine import JournalEngine


@pytest.mark.parametrize("kwargs, text", [
    (dict(data_width=16), "16"),
    (dict(ring_size=1000), "1000"),
    (dict(ring_size=64), "64"),
    (dict(site="model"), "'model'"),
])
def test_bad_parameters(kwargs, text):
    with pytest.raises(ValueError, match=text):
        JournalEngine(**kwargs)


def test_good_parameters():
    e = JournalEngine(8, 128, 12_000_000, site="board")
    assert (e.ring_bits, e.site) == (7, "board")
    assert e.rx.payload.shape().width == 8
