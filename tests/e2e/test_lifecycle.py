"""A site stopped by SIGTERM or SIGINT exits with 0, says so in one log line,
leaves no traceback, and a restart finds everything it acked.  The relay
leaves its journal volume's clean-shutdown mark: it restarts without a
recovery scan."""

import asyncio
import re
import signal
import subprocess
import sys
import time

from tricopy.host.secondary.site import RestoreState

from .cluster import Cluster, Workload
from .test_config import _site_toml
from .test_replication import check_volumes


def _stopped_cleanly(cluster: Cluster, role: str, sig: signal.Signals) -> None:
    assert cluster.terminate(role, sig) == 0
    log = cluster.log(role)
    assert "Traceback" not in log, log[-3000:]
    assert f"{role} {role} stopped ({sig.name})" in log, log[-3000:]


CLEAN_START = "clean start, no recovery scan"


def test_sigterm_and_sigint_stop_every_site_cleanly(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_all()
        for role in ("primary", "relay", "secondary"):
            # the start line says what listens where
            data, ctl = cluster.ports[role]
            line = re.search(rf"{role} {role} starting: (.*)", cluster.log(role)).group(1)
            assert f"control {cluster.control_arg(role)}" in line
            assert (f"data 127.0.0.1:{data}" in line) == (role != "primary")
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=31)

        async def scenario():
            # The relay stops while both links are up and writes are in flight.
            load = asyncio.create_task(work.run(duration=2.5))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(_stopped_cleanly, cluster, "relay", signal.SIGTERM)
            await asyncio.to_thread(cluster.start, "relay")
            await load

        asyncio.run(scenario())
        # The SIGTERM left the clean-shutdown mark: the restart trusted it.
        assert cluster.status("relay")["clean_start"] is True
        assert cluster.log("relay").count(CLEAN_START) == 1, cluster.log("relay")[-3000:]
        cluster.wait_drained()
        check_volumes(cluster, work)
        _stopped_cleanly(cluster, "secondary", signal.SIGINT)
        # A clean stop saves the restore point at what was applied: no replay
        # (and no "not consistent" window) at the next start.
        state = RestoreState(cluster.root / "secondary" / "state" / "g1.restored").doc()
        assert state["mark"] == state["last_seq"], state
        _stopped_cleanly(cluster, "primary", signal.SIGTERM)
        _stopped_cleanly(cluster, "relay", signal.SIGTERM)
        # Stopped in any order, the trio comes back with nothing lost.
        cluster.start_all()
        assert cluster.status("relay")["clean_start"] is True
        assert cluster.log("relay").count(CLEAN_START) == 2
        cluster.wait_drained()
        check_volumes(cluster, work)
    finally:
        cluster.stop_all()


def test_tricopy_relay_logs_what_the_docs_show(tmp_path):
    """`tricopy relay --config F` (the command the docs give) logs in the
    site's format, every line tagged with its role, the start line first and
    the stop line last: host/cli.py configures logging before the site does,
    and its format used to win (no role, another field order)."""
    config = _site_toml(tmp_path, "relay")
    log_path = tmp_path / "relay.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "tricopy.host.cli", "relay", "--config",
                                 str(config)], cwd=tmp_path, stderr=log_file, text=True)
        try:
            deadline = time.monotonic() + 20
            while "listening on" not in log_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    lines = log_path.read_text().splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert re.match(r"\S+ \S+ relay INFO tricopy\.host\.sites_cli: relay relay starting: "
                    r"data 127\.0\.0\.1:\d+, control ", lines[0]), lines
    assert lines[-1].endswith(" relay INFO tricopy.host.sites_cli: relay relay stopped (SIGTERM)"), \
        lines
    assert all(re.match(r"\S+ \S+ relay (INFO|WARNING) ", line) for line in lines), lines
