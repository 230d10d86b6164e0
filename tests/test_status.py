"""The status headline (host/rcm/status.py ``assess``) over made-up site views."""

from tricopy.host.rcm.status import DEGRADED, DOWN, HEALTHY, assess


def views(**over):
    p = {"grsts": "PAIR", "reason": "", "split": False, "fenced": False, "connected": True,
         "copy_done": 0, "copy_total": 0, "copy_pending_bytes": 0}
    r = {"grsts": "PAIR", "reason": "", "secondary_connected": True, "held": 3, "used": 12288,
         "lag": 0.25, "next_seq": 11}
    s = {"grsts": "PAIR", "reason": "", "consistent": True, "last_restored": 7, "takeover": None}
    row = {"group": "g1", "primary": p, "relay": r, "secondary": s}
    for role, changes in over.items():
        if changes is None or "missing" in (changes or {}):
            row[role] = changes
        else:
            row[role] = {**row[role], **changes}
    return row


def test_healthy_with_rpo_and_what_a_takeover_loses():
    a = assess(views())
    assert (a["level"], a["state"]) == (HEALTHY, "PAIR")
    assert a["rpo"] == {"journals": 3, "bytes": 12288, "seconds": 0.25}
    assert "SEQ# 8..10 (3 journals" in a["takeover_loss"]


def test_the_worst_condition_wins_and_names_its_site():
    a = assess(views(relay=None, secondary={"grsts": "SUSP", "reason": "relay behind"}))
    assert (a["level"], a["state"], a["site"]) == (DOWN, "RELAY LOST", "relay")
    assert {p["site"] for p in a["problems"]} == {"relay", "secondary"}
    assert a["rpo"] is None and "forced takeover keeps SEQ# 7" in a["takeover_loss"]


def test_a_reachable_site_without_the_group_says_what_it_has():
    a = assess(views(secondary={"missing": True, "has": ["g2"]}))
    assert a["level"] == DEGRADED and "its groups: g2" in a["why"]


def test_split_is_degraded_an_error_suspension_is_down():
    assert assess(views(primary={"grsts": "SUSP", "split": True}))["level"] == DEGRADED
    assert assess(views(primary={"grsts": "SUSP", "reason": "relay refused"}))["level"] == DOWN


def test_links_down_and_taken_over():
    a = assess(views(relay={"secondary_connected": False}))
    assert a["level"] == DEGRADED and a["links"]["relay->secondary"] is False
    a = assess(views(primary={"connected": False}))
    assert a["level"] == DOWN and a["state"] == "LINK DOWN"
    t = {"epoch": 1, "seq": 9, "forced": False}
    a = assess(views(primary=None, secondary={"takeover": t, "consistent": True}))
    assert (a["level"], a["state"]) == (DEGRADED, "TAKEN OVER")


def test_progress_bar_ends_with_one_pair_line():
    """Found by the demo test: a COPY poll that saw 100 % swallowed the PAIR line."""
    import io
    from tricopy.host.rcm.pairs import progress_bar
    out = io.StringIO()
    show = progress_bar(out)
    for st, done in (("COPY", 5), ("COPY", 10), ("PAIR", 10), ("PAIR", 10)):
        show({"grsts": st, "copy_total": 10, "copy_done": done, "copy_chunk": 65536})
    lines = out.getvalue().splitlines()
    assert [l.split()[0] for l in lines] == ["COPY", "COPY", "PAIR"], lines
    assert "100.0%" in lines[-1]
