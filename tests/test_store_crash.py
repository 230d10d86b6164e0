"""Crash test: SIGKILL a group-committing writer at random moments, many times.

Every journal the writer reported durable must be intact after each reopen
(control data and data byte-equal to what was written: the content is a
function of SEQ#, see store_writer.journal), and nothing torn or invented is
ever returned.  On some rounds the test also damages the first journal past
the last reported durable one, as a power cut may leave it, and checks that
recovery ends exactly there.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

from tricopy.host.wire import protocol as p
from tricopy.host.journal.store import HEADER_SIZE, JournalStore

from store_writer import journal

WRITER = os.path.join(os.path.dirname(__file__), "store_writer.py")
RING = 256 << 10
ROUNDS = 50


def wait_started(out, proc, timeout: float = 60.0) -> None:
    """Wait until the writer has reported something, so that the random kill
    lands in its work and not in Python's start-up on a loaded machine."""
    deadline = time.monotonic() + timeout
    while out.stat().st_size == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def test_sigkill_at_random_moments_loses_no_durable_journal(tmp_path):
    rng = random.Random(20261125)
    path = tmp_path / "jnl"
    jofs = {}               # seq -> JOFS of its latest append
    max_durable = 0         # highest SEQ# ever reported durable
    released = 0            # highest release reported done
    release_tried = 0       # highest release started
    checked = damaged = wraps = 0
    start = time.monotonic()
    for rnd in range(ROUNDS):
        out = tmp_path / f"out{rnd}"
        with open(out, "w") as f:
            proc = subprocess.Popen([sys.executable, WRITER, str(path), str(RING), str(rnd)],
                                    stdout=f, stderr=subprocess.PIPE)
            wait_started(out, proc)
            time.sleep(rng.uniform(0.1, 0.7))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        # A line cut by the kill is ignored: it was never "reported".
        for line in out.read_text().splitlines():
            tok = line.split()
            if len(tok) == 3 and tok[0] == "A":
                jofs[int(tok[1])] = int(tok[2])
            elif len(tok) == 2 and tok[0] == "D":
                max_durable = max(max_durable, int(tok[1]))
            elif len(tok) == 2 and tok[0] == "R":
                released = max(released, int(tok[1]))
            elif len(tok) == 2 and tok[0] == "r":
                release_tried = max(release_tried, int(tok[1]))

        # Half the time: the first journal past the last acked one is torn.
        victim = max_durable + 1
        tear = rng.random() < 0.5 and victim in jofs and os.path.exists(path)
        if tear:
            # Look at a copy: closing the real file would leave a clean-shutdown
            # mark, and the torn byte below would then be damage after a clean
            # stop (docs/store.md) rather than a journal torn by the kill.
            peek = f"{path}.peek"
            shutil.copyfile(path, peek)
            with JournalStore.open(peek) as s:
                tear = s.tail_seq <= victim < s.next_seq and s.read(victim, 1)[0][0].jofs == jofs[victim]
            if tear:
                ctl, _ = journal(victim, jofs[victim])
                r = p.record_size(ctl.data_len)
                spot = jofs[victim] + rng.choice([rng.randrange(64), 64 + rng.randrange(max(1, ctl.data_len))])
                with open(path, "r+b") as f:
                    f.seek(HEADER_SIZE + min(spot, jofs[victim] + r - 1))
                    byte = f.read(1)
                    f.seek(-1, 1)
                    f.write(bytes([byte[0] ^ 0x5A]) if byte else b"\x5A")
                damaged += 1

        if not os.path.exists(path):
            continue            # killed before the store was created
        with JournalStore.open(path) as s:
            assert s.next_seq > max_durable, f"round {rnd}: acked journal lost ({s.recovery})"
            if tear:
                assert s.next_seq == victim, f"round {rnd}: torn seq {victim} returned"
            # Releases done are durable; none beyond the ones started.
            assert released + 1 <= s.tail_seq <= max(release_tried, released) + 1
            wraps += s.wrap_at < s.size
            for ctl, data in s.read(s.tail_seq, 1 << 30):
                want_ctl, want_data = journal(ctl.seq, ctl.jofs)
                assert data == want_data and ctl.pack() == want_ctl.pack(), f"seq {ctl.seq}"
                if ctl.seq <= max_durable:
                    # Acked: at the very place it was acked at.
                    assert ctl.jofs == jofs[ctl.seq]
                checked += 1
    assert max_durable > 1000 and released > 0, (max_durable, released)
    assert damaged >= 5 and checked > 1000
    print(f"{ROUNDS} kills, {max_durable} journals acked, {checked} checked after reopen, "
          f"{damaged} torn, {wraps} reopens with a WRAP marker, {time.monotonic() - start:.1f} s")
