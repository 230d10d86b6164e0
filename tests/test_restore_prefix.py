"""The SVOL is a prefix at every instant anyone can observe it.

The trap (found by an outside test): the secondary applies journals as they
arrive and saves its restore point R only now and then, so a crash leaves
the SVOLs holding writes up to some X > R.  After the restart R+1..X are
applied again, in order, over an image that already holds X: until the
replay passes X, a block written twice in (R, X] shows its older write while
other blocks show newer ones.  That image is no prefix of anything, and the
group must not call it consistent nor serve it.

These tests drive ``RestoreGroup`` in-process, "crash" it by dropping the
object (the files stay as a SIGKILL leaves them: written to the page cache)
and restart it from its files, then check every intermediate image.
"""

import asyncio

import pytest

from tricopy.host.wire import protocol
from tricopy.host.config import GroupAttr, GroupConfig, SiteConfig, VolumeConfig
from tricopy.host.wire.protocol import Control, Hello, Kind, Role
from tricopy.host.secondary import site
from tricopy.host.secondary.site import RestoreGroup

BLOCK = 4096
BLOCKS = 8          # a hot spot: every block is written many times
JOURNALS = 120


def journal(seq: int) -> tuple[Control, bytes]:
    """Journal ``seq`` writes block ``seq * 5 % BLOCKS`` with a pattern naming ``seq``."""
    data = seq.to_bytes(8, "little") * (BLOCK // 8)
    ctl = Control(seq=seq, address=(seq * 5 % BLOCKS) * BLOCK, length=BLOCK, data_len=BLOCK,
                  data_crc=protocol.crc32c(data), group=1, kind=Kind.UPDATE)
    return ctl.with_ccrc(), data


def prefix_image(n: int) -> bytes:
    """The SVOL after journals 1..n."""
    img = bytearray(BLOCKS * BLOCK)
    for seq in range(1, n + 1):
        ctl, data = journal(seq)
        img[ctl.address:ctl.address + BLOCK] = data
    return bytes(img)


PREFIXES = {n: prefix_image(n) for n in range(JOURNALS + 1)}


def make_group(tmp_path) -> RestoreGroup:
    vol = VolumeConfig(idx=0, group=1, path=tmp_path / "svol0.img", size=BLOCKS * BLOCK,
                       block_size=BLOCK)
    if not vol.path.exists():
        vol.path.write_bytes(bytes(vol.size))
    cfg = GroupConfig(grnum=1, grname="g1", attr=GroupAttr.RESTORE)
    site = SiteConfig(site="secondary", listen=None, control=None, state_dir=tmp_path / "state",
                      groups=(cfg,), volumes=(vol,))
    g = RestoreGroup(cfg, site)
    g.pair_set("PAIR", 0)
    return g


def image(g: RestoreGroup) -> bytes:
    return g.volumes[0].read(0, BLOCKS * BLOCK)


async def feed(g: RestoreGroup, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        await g.stage(*journal(seq))


def step(g: RestoreGroup, n: int) -> int:
    """One restorer step as RestoreGroup.restorer does it: mark first, then apply."""
    mark = g.mark_due()
    if mark is not None:
        g.save_mark(mark)
    return g.restore(n)


def check_observable(g: RestoreGroup, seen_torn: list) -> None:
    """Whatever the group claims must be true of the image a reader sees now."""
    img = image(g)
    if img != PREFIXES[g.applied]:
        seen_torn.append(g.applied)
    if g.consistent() or g.readable() is None:
        assert img == PREFIXES[g.applied], (
            f"group says consistent/readable at SEQ# {g.applied} but the SVOL is not the "
            f"prefix 1..{g.applied}")


@pytest.mark.parametrize("restore_point,crash_at", [(20, 90), (0, 60), (50, 51)])
def test_crash_during_restore_never_shows_a_torn_image_as_consistent(tmp_path, restore_point,
                                                                     crash_at):
    async def run():
        g = make_group(tmp_path)
        await feed(g, 1, JOURNALS)
        while g.applied < restore_point:
            step(g, min(7, restore_point - g.applied))
        g.checkpoint()
        assert g.last_restored == restore_point
        while g.applied < crash_at:
            step(g, min(7, crash_at - g.applied))
        assert image(g) == PREFIXES[crash_at]
        # Crash: the object goes, the files stay as they are.  Restart.
        g = make_group(tmp_path)
        assert g.last_restored == restore_point
        if crash_at > restore_point:
            assert g.catching_up and not g.consistent() and g.readable() is not None
            assert g.status()["catching_up_to"] >= crash_at
        # The relay resends from the restore point; observe after every journal.
        await feed(g, restore_point + 1, JOURNALS)
        torn: list[int] = []
        while step(g, 1):
            check_observable(g, torn)
        assert g.applied == JOURNALS and not g.catching_up
        g.checkpoint()
        assert g.consistent() and image(g) == PREFIXES[JOURNALS]
        return torn

    torn = asyncio.run(run())
    if (restore_point, crash_at) == (20, 90):
        # The scenario really passes through torn images (what the flag hides).
        assert torn


def test_second_crash_during_catch_up_stays_not_consistent(tmp_path):
    """Killed again in the middle of the replay: still not consistent after the
    restart, with the relay gone, until a replay passes the first mark."""
    async def run():
        g = make_group(tmp_path)
        await feed(g, 1, JOURNALS)
        while g.applied < 30:
            step(g, 30 - g.applied)
        g.checkpoint()
        while g.applied < 100:
            step(g, 100 - g.applied)
        g = make_group(tmp_path)            # first crash
        await feed(g, 31, 34)
        while step(g, 5):
            pass
        g.checkpoint()                  # the replay moved the restore point to 34
        assert g.last_restored == 34 and g.catching_up
        g = make_group(tmp_path)            # second crash; the relay is gone: nothing to feed
        assert g.catching_up and not g.consistent() and g.readable() is not None
        assert image(g) != PREFIXES[g.applied]

    asyncio.run(run())


def test_relay_behind_the_restore_point_is_refused(tmp_path):
    """Stream identity: a relay whose newest SEQ# is below what the SVOLs hold
    (or at another epoch) is refused with a reason that names the numbers."""
    async def run():
        g = make_group(tmp_path)
        await feed(g, 1, 40)
        while step(g, 8):
            pass
        g.checkpoint()
        ok = Hello(Role.RELAY, 1, 0, 40, "g1", "relay")
        assert g.refuse_relay(ok) is None
        behind = Hello(Role.RELAY, 1, 0, 12, "g1", "relay")
        why = g.refuse_relay(behind)
        assert why is not None and "12" in why and "40" in why
        other_epoch = Hello(Role.RELAY, 1, 3, 40, "g1", "relay")
        assert "epoch 3" in g.refuse_relay(other_epoch)
        # The ordered resync (pair create/resync) moves the point back to the relay's.
        g.suspend(why)
        g.pair_set("COPY", 1 << 62, relay_seq=12)
        assert g.last_restored == 12 and g.grsts == "PAIR" and g.refuse_relay(behind) is None
        assert not g.consistent()
        g = make_group(tmp_path)        # and the rebase is durable
        assert g.last_restored == 12 and g.state.mark == 12

    asyncio.run(run())


def test_an_svol_write_error_keeps_the_restore_point_before_it(tmp_path, monkeypatch):
    """A journal that fails to apply, and every journal after it in the batch,
    stays out of the restore point: the group suspends with the volume's error
    and a checkpoint never covers what is not on the SVOL."""
    from tricopy.host.disk.volume import VolumeError

    async def run():
        g = make_group(tmp_path)
        await feed(g, 1, 10)
        vol = g.volumes[0]
        real = vol.write

        def failing(offset, data):
            if data == journal(6)[1]:
                raise VolumeError(f"{vol.path}: write at {offset} failed: Input/output error")
            return real(offset, data)

        monkeypatch.setattr(vol, "write", failing)
        while step(g, 10):
            pass
        assert g.grsts == "SUSP" and "Input/output error" in g.reason
        assert g.applied == 5
        g.checkpoint()
        assert g.last_restored <= 5 and not g.consistent()
        assert "SEQ# 6..6 again" in g.readable()
    asyncio.run(run())


def test_marks_are_paced_when_journals_come_one_at_a_time(tmp_path, monkeypatch):
    """At low depth each journal used to arrive alone and cost a mark save
    (state file, two fsyncs, a rename).  A short run now waits for MARK_PERIOD
    after the last save; a long run (MARK_RUN) saves at once; and everything
    staged is applied in the end, never past a saved mark."""
    g = make_group(tmp_path)
    saves = []
    real = g.save_mark

    def save_mark(mark):
        assert mark >= g.applied       # nothing applied past a mark before its save
        saves.append(mark)
        real(mark)
    g.save_mark = save_mark
    t = 1000.0
    asyncio.run(g.stage(*journal(1)))
    assert g.mark_wait(t) == 0                    # no save yet: at once
    g.save_mark(g.mark_due())
    g._mark_at = t
    assert g.restore() == 1
    asyncio.run(g.stage(*journal(2)))
    assert g.mark_wait(t + 0.005) == pytest.approx(site.MARK_PERIOD - 0.005)
    assert g.mark_wait(t + site.MARK_PERIOD) == 0
    asyncio.run(feed(g, 3, site.MARK_RUN + 1))
    assert g.mark_wait(t) == 0                    # a long run: no waiting
    assert g.restore() == 0                       # and nothing applies before its save

    async def trickle():
        # The restorer as the site runs it, journals arriving one a
        # millisecond (the arrival rate of a depth-1 host), then the end of
        # the stream: all of it applied.
        task = asyncio.create_task(g.restorer(0))
        for seq in range(site.MARK_RUN + 2, JOURNALS + 1):
            await g.stage(*journal(seq))
            await asyncio.sleep(0.001)
        while g.applied < JOURNALS:
            g._applied_more.clear()
            await g._applied_more.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    saves.clear()
    asyncio.run(trickle())
    assert image(g) == PREFIXES[JOURNALS]
    # 120 - 65 journals one at a time: a few marks, not one each
    assert 1 <= len(saves) <= 12, saves
