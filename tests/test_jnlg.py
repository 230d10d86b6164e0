"""The JNLG table, the copy bitmap and the pairing rules (patent Fig. 5, [0053])."""

import copy
import json

import pytest

from tricopy.host.rcm.jnlg import CopyBitmap, JnlgEntry, JnlgTable, PairingError, check_pairing


def dvol(idx, volid, size=1 << 20, bs=4096):
    return {"idx": idx, "volid": volid, "volname": f"v{volid}", "size": size, "block_size": bs,
            "volsts": "SMPL", "bjptr": 0}


def table(grattr, dvols=(), jvols=(), grsts="SMPL", grnum=1, epoch=0, grname="db"):
    return {"groups": [{"grnum": grnum, "grname": grname, "grattr": grattr, "grsts": grsts,
                        "epoch": epoch, "reason": "", "consistent_seq": 0,
                        "dvols": list(dvols), "jvols": list(jvols)}]}


def trio():
    return (table("MASTER", [dvol(0, 10), dvol(1, 11)]),
            table("INTERMEDIARY", jvols=[{"volid": 5, "volname": "j", "size": 1 << 20}]),
            table("RESTORE", [dvol(0, 20), dvol(1, 21)]))


def test_a_good_trio_passes():
    check_pairing("db", *trio())


@pytest.mark.parametrize("breakage, rule, message", [
    (lambda p, r, s: p["groups"][0].update(grname="other"), "same GRNAME",
     "the primary has no journal group named 'db' (it has: other)"),
    (lambda p, r, s: s["groups"][0].update(grattr="MASTER"), "attributes MASTER/INTERMEDIARY/RESTORE",
     "on the secondary is MASTER, it must be RESTORE"),
    (lambda p, r, s: r["groups"][0].update(grnum=2), "same GRNUM", "GRNUM 1 on the primary, 2"),
    (lambda p, r, s: s["groups"][0].update(epoch=3), "same epoch", "epoch 0 / 0 / 3"),
    (lambda p, r, s: r["groups"][0].update(grsts="PAIR"), "all groups SMPL", "is PAIR on the relay"),
    (lambda p, r, s: r["groups"][0].update(jvols=[]), "relay has a journal volume", "no JVOL"),
    (lambda p, r, s: s["groups"][0]["dvols"].pop(), "same volume index",
     "PVOL indexes [0, 1] do not match SVOL indexes [0]"),
    (lambda p, r, s: s["groups"][0]["dvols"][1].update(block_size=512), "same volume size",
     "IDX 1: PVOL is 1048576 bytes in 4096-byte blocks, SVOL 1048576 in 512-byte blocks"),
    (lambda p, r, s: p["groups"].append(table("MASTER", [dvol(0, 11)], grnum=2,
                                              grname="x")["groups"][0]),
     "one volume, one group", "on the primary, v11 (IDX 1) is already in group 'x'"),
])
def test_each_rule_refuses_with_its_name(breakage, rule, message):
    p, r, s = copy.deepcopy(trio())
    breakage(p, r, s)
    with pytest.raises(PairingError) as exc:
        check_pairing("db", p, r, s)
    assert exc.value.rule == rule
    assert message in str(exc.value) and f"'{rule}'" in str(exc.value)


def test_table_round_trip_and_atomic_file(tmp_path):
    path = tmp_path / "jnlg.json"
    t = JnlgTable.load(path)
    e = t.ensure(7, "db", "MASTER", epoch=2, initial="SMPL")
    e.dvols = []
    e.set_state("COPY")
    t.save()
    assert not (tmp_path / "jnlg.json.tmp").exists()
    again = JnlgTable.load(path).entries[7]
    assert (again.grname, again.grattr, again.grsts, again.epoch) == ("db", "MASTER", "COPY", 2)
    path.write_text(json.dumps({"groups": [{**e.to_json(), "grsts": "BOGUS"}]}))
    with pytest.raises(ValueError, match="jnlg.json is corrupt: GRSTS 'BOGUS'"):
        JnlgTable.load(path)
    with pytest.raises(ValueError, match="GRSTS must be one of SMPL, COPY, PAIR, SUSP"):
        JnlgEntry(1, "a", "MASTER").set_state("PAUSED")


def test_copy_bitmap(tmp_path):
    path = tmp_path / "g.bitmap"
    bm = CopyBitmap(path, {0: 10 * 65536 + 4096, 3: 65536}, 65536)
    assert bm.nchunks(0) == 11 and bm.count() == 0
    assert bm.mark(0, 65536 - 4096, 8192) is True       # straddles chunks 0 and 1
    assert bm.mark(0, 65536, 4096) is False             # already set: nothing to persist
    assert list(bm.pending(0)) == [0, 1]
    assert bm.covered(0, 0, 2 * 65536) and not bm.covered(0, 0, 3 * 65536)
    bm.save()
    assert list(CopyBitmap(path, {0: 10 * 65536 + 4096, 3: 65536}, 65536).pending(0)) == [0, 1]
    bm.set_all()
    assert bm.count() == 12 and bm.count(3) == 1
    bm.clear(0, 10)
    assert 10 not in list(bm.pending(0))
    raw = json.loads(path.read_text())
    raw["bits"]["0"] = "AAAA"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="CRC mismatch"):
        CopyBitmap(path, {0: 10 * 65536 + 4096, 3: 65536}, 65536)
