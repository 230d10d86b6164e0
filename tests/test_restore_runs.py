"""The secondary restores a run of adjacent journals with one pwritev.

Journals that each start where the one before ended on the same SVOL are
written together (``RestoreGroup.restore``).  What must not change: the
SVOL after journals 1..n is exactly what applying them one by one in SEQ#
order gives, whatever mix of adjacent runs, overwrites of the same blocks,
ZERO/TRIM journals and restore step sizes comes in; and a run that cannot
be written never counts as applied.
"""

import asyncio
import random

import pytest

from tricopy.host.config import GroupAttr, GroupConfig, SiteConfig, VolumeConfig
from tricopy.host.disk import fileio
from tricopy.host.secondary.site import RestoreGroup
from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import Control, Kind

BLOCK = 4096
BLOCKS = 32


def make_group(tmp_path, volumes=(0,)) -> RestoreGroup:
    vols = []
    for idx in volumes:
        vol = VolumeConfig(idx=idx, group=1, path=tmp_path / f"svol{idx}.img",
                           size=BLOCKS * BLOCK, block_size=BLOCK)
        vol.path.write_bytes(bytes(vol.size))
        vols.append(vol)
    cfg = GroupConfig(grnum=1, grname="g1", attr=GroupAttr.RESTORE)
    site = SiteConfig(site="secondary", listen=None, control=None, state_dir=tmp_path / "state",
                      groups=(cfg,), volumes=tuple(vols))
    g = RestoreGroup(cfg, site)
    g.pair_set("PAIR", 0)
    return g


def workload(rng: random.Random, n: int):
    """Journals 1..n: mostly runs of adjacent writes (1-3 blocks each), some
    jumping back over blocks just written, some ZERO/TRIM, over two SVOLs."""
    out, addr, idx = [], 0, 0
    for seq in range(1, n + 1):
        roll = rng.random()
        if roll < 0.2:
            addr, idx = rng.randrange(BLOCKS) * BLOCK, rng.randrange(2)   # jump (or overwrite)
        blocks = min(rng.randint(1, 3), BLOCKS - addr // BLOCK)
        if roll > 0.92:
            kind = rng.choice((Kind.ZERO, Kind.TRIM))
            ctl = Control(seq=seq, address=addr, length=blocks * BLOCK, data_len=0, data_crc=0,
                          group=1, idx=idx, kind=kind, tag=seq)
            data = b""
        else:
            data = bytes([seq & 0xFF, idx]) * (blocks * BLOCK // 2)
            ctl = Control(seq=seq, address=addr, length=len(data), data_len=len(data),
                          data_crc=protocol.crc32c(data), group=1, idx=idx, kind=Kind.UPDATE,
                          tag=seq)
        out.append((ctl.with_ccrc(), data))
        addr = (addr + blocks * BLOCK) % (BLOCKS * BLOCK)
    return out


def one_by_one(journals) -> dict[int, bytes]:
    img = {0: bytearray(BLOCKS * BLOCK), 1: bytearray(BLOCKS * BLOCK)}
    for ctl, data in journals:
        img[ctl.idx][ctl.address:ctl.address + ctl.length] = data or bytes(ctl.length)
    return {k: bytes(v) for k, v in img.items()}


@pytest.mark.parametrize("seed", range(4))
def test_runs_restore_the_image_of_one_by_one(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    journals = workload(rng, 300)
    calls = {"pwritev": 0}
    real = fileio.pwritev

    def counting(fd, bufs, pos):
        calls["pwritev"] += 1
        return real(fd, bufs, pos)

    monkeypatch.setattr(fileio, "pwritev", counting)

    async def run():
        g = make_group(tmp_path, (0, 1))
        for ctl, data in journals:
            await g.stage(ctl, data)
        while g.applied < len(journals):
            # every step size, so runs are cut at step ends too
            if (mark := g.mark_due()) is not None:
                g.save_mark(mark)
            assert g.restore(rng.randint(1, 40))
            upto = one_by_one(journals[:g.applied])
            assert {i: g.volumes[i].read(0, BLOCKS * BLOCK) for i in (0, 1)} == upto
        assert g.applied_tag == len(journals)
        g.checkpoint()
        assert g.last_restored == len(journals)

    asyncio.run(run())
    assert calls["pwritev"] > 20, "no run of adjacent journals went out as one pwritev"


def test_a_run_that_cannot_be_written_is_not_applied(tmp_path):
    """The last journal of an adjacent run lies past the SVOL's end: the whole
    run is refused, the group suspends, and nothing from the run's first
    journal on counts as applied (the restore point can never cover it)."""
    def write(seq, block, blocks=1):
        data = bytes([seq]) * (blocks * BLOCK)
        return Control(seq=seq, address=block * BLOCK, length=len(data), data_len=len(data),
                       data_crc=protocol.crc32c(data), group=1, kind=Kind.UPDATE,
                       tag=seq).with_ccrc(), data

    journals = [write(1, 3), write(2, BLOCKS - 3), write(3, BLOCKS - 2, 2), write(4, BLOCKS)]

    async def run():
        g = make_group(tmp_path)
        for ctl, data in journals:
            g.stream.receive(ctl, data)      # staged as the link would, no checks
        g.save_mark(g.mark_due())
        g.restore(10)
        assert g.grsts == "SUSP" and "outside volume" in g.reason
        assert g.applied == 1 and g.applied_tag == 1
        assert g.volumes[0].read(0, BLOCKS * BLOCK) == one_by_one(journals[:1])[0]

    asyncio.run(run())
