"""Prometheus metrics of a site: ``metrics = "127.0.0.1:9101"`` in its config (off by default).

Everything but the two latency histograms is read at scrape time from the
same per-group status the control socket's ``status`` returns, so the
endpoint and ``tricopy status --json`` cannot disagree and the write path
pays nothing for them.  The histograms are observed where the time is
spent: the host write at the primary (apply, log, journal, relay ACK) and
the group-commit fdatasync at the relay.

Names follow the Prometheus conventions (``_total`` counters, ``_seconds``,
``_bytes``); every series has the ``group`` label.  docs/operations.md
lists them and compares them with drbd-reactor's.

The HTTP side is a few lines of asyncio on the site's own loop rather than
prometheus-client's threaded server: a scrape then reads the groups' state
between two event-loop steps, never in the middle of one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["REGISTRY", "HOST_WRITE_SECONDS", "RELAY_FSYNC_SECONDS", "SiteCollector",
           "serve_metrics"]

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0)
HOST_WRITE_SECONDS = Histogram("tricopy_host_write_seconds",
                               "Host write at the primary, from arrival to the relay's ACK",
                               ["group"], buckets=_LATENCY, registry=REGISTRY)
RELAY_FSYNC_SECONDS = Histogram("tricopy_relay_fsync_seconds",
                                "One group-commit fdatasync of the relay's journal volume",
                                ["group"], buckets=_LATENCY, registry=REGISTRY)

GRSTS = ("SMPL", "COPY", "PAIR", "SUSP")

# (status key, metric name, help, kind) per role; kind "g" gauge, "c" counter.
_FIELDS = {
    "primary": [
        ("epoch", "tricopy_epoch", "Epoch of the group at this site", "g"),
        ("last_pseq", "tricopy_primary_pseq_issued", "Last PSEQ given to a journal", "g"),
        ("acked_pseq", "tricopy_primary_pseq_acked", "Highest PSEQ the relay ACKed", "g"),
        ("pending", "tricopy_primary_pending_journals", "Journals sent, not ACKed yet", "g"),
        ("acked", "tricopy_primary_acked_journals_total", "Journals ACKed by the relay", "c"),
        ("resent", "tricopy_primary_resent_journals_total", "Journals sent again", "c"),
        ("full_probes", "tricopy_primary_full_probes_total", "Probes sent while FULL", "c"),
        ("reconnects", "tricopy_link_connects_total", "Connections made to the relay", "c"),
        ("suspensions", "tricopy_suspensions_total", "Times the group suspended", "c"),
        ("write_log_bytes", "tricopy_primary_write_log_bytes", "Size of the write log", "g"),
        ("copy_pending_bytes", "tricopy_copy_pending_bytes", "Bytes set in the copy bitmap", "g"),
        ("copied_bytes", "tricopy_resynced_bytes_total", "Bytes sent as base journals", "c"),
        ("activity_extents", "tricopy_primary_activity_extents",
         "Extents an unclean stop now would resync", "g"),
        ("fenced", "tricopy_primary_fenced", "1 when another site took the group over", "g"),
    ],
    "relay": [
        ("epoch", "tricopy_epoch", "Epoch of the group at this site", "g"),
        ("used", "tricopy_relay_journal_used_bytes", "Bytes of the journal volume in use", "g"),
        ("size", "tricopy_relay_journal_size_bytes", "Size of the journal volume ring", "g"),
        ("seq_issued", "tricopy_relay_seq_issued", "Last SEQ# issued", "g"),
        ("forwarded", "tricopy_relay_seq_forwarded", "Last SEQ# sent to the secondary", "g"),
        ("secondary_acked", "tricopy_relay_seq_restored", "Secondary's restore point as ACKed",
         "g"),
        ("held", "tricopy_lag_journals", "Journals held, not yet restored (RPO)", "g"),
        ("used", "tricopy_lag_bytes", "Bytes held, not yet restored (RPO)", "g"),
        ("lag", "tricopy_lag_seconds", "Age of the oldest journal not yet restored (RPO)", "g"),
        ("fulls", "tricopy_relay_full_total", "Journals answered FULL", "c"),
        ("dups", "tricopy_relay_duplicates_total", "Resent journals answered again", "c"),
        ("primary_accepts", "tricopy_link_accepts_total",
         "Connections taken from the upstream (primary) site", "c"),
        ("secondary_connects", "tricopy_link_connects_total",
         "Connections made to the downstream (secondary) site", "c"),
    ],
    "secondary": [
        ("epoch", "tricopy_epoch", "Epoch of the group at this site", "g"),
        ("last_restored", "tricopy_secondary_seq_restored", "Restore point (SEQ#)", "g"),
        ("applied", "tricopy_secondary_seq_applied", "Applied to the SVOLs (SEQ#)", "g"),
        ("staged", "tricopy_secondary_staged_journals", "Journals received, not applied", "g"),
        ("consistent", "tricopy_secondary_consistent", "1 when the SVOLs are a consistent image",
         "g"),
        ("written_bytes", "tricopy_takeover_written_bytes",
         "After a takeover: bytes of chunks written here since", "g"),
        ("accepts", "tricopy_link_accepts_total", "Connections taken from the relay", "c"),
    ],
}
_LINKS = {"primary": ("connected", "primary->relay"),
          "relay": ("secondary_connected", "relay->secondary"),
          "secondary": ("connected", "relay->secondary")}


class SiteCollector:
    """A prometheus-client collector over ``groups()``: the site's group status dicts."""

    def __init__(self, role: str, site: str, groups: Callable[[], Iterable[dict]]):
        self.role, self.site, self.groups = role, site, groups

    def collect(self):
        rows = list(self.groups())
        fams = {}
        for key, name, doc, kind in _FIELDS[self.role]:
            cls = CounterMetricFamily if kind == "c" else GaugeMetricFamily
            fam = fams.get(name) or cls(name.removesuffix("_total") if kind == "c" else name,
                                        doc, labels=["group"])
            fams[name] = fam
            for g in rows:
                value = g.get(key)
                if key == "seq_issued":
                    value = g["next_seq"] - 1
                if value is None:
                    continue
                fam.add_metric([g["grname"]], float(value))
        state = GaugeMetricFamily("tricopy_group_state", "1 for the group's GRSTS at this site",
                                  labels=["group", "role", "state"])
        link = GaugeMetricFamily("tricopy_link_up", "1 while the link of this hop is up",
                                 labels=["group", "hop"])
        for g in rows:
            for st in GRSTS:
                state.add_metric([g["grname"], self.role, st], float(g["grsts"] == st))
            key, hop = _LINKS[self.role]
            link.add_metric([g["grname"], hop], float(bool(g.get(key))))
        if self.role == "primary":
            vol = CounterMetricFamily("tricopy_host_written_bytes",
                                      "Bytes of host writes (and zeroed or trimmed ranges) done "
                                      "at the primary", labels=["group", "volume"])
            for g in rows:
                for idx, n in (g.get("volume_bytes") or {}).items():
                    vol.add_metric([g["grname"], idx], float(n))
            yield vol
        if self.role == "relay":
            ratio = GaugeMetricFamily("tricopy_relay_journal_used_ratio",
                                      "Fill of the journal volume ring (0..1)", labels=["group"])
            for g in rows:
                ratio.add_metric([g["grname"]], g["used"] / g["size"] if g["size"] else 0.0)
            yield ratio
        yield from fams.values()
        yield state
        yield link


async def serve_metrics(addr: tuple[str, int], collector: SiteCollector) -> asyncio.Server:
    """An HTTP listener for ``GET /metrics`` on the running loop."""
    REGISTRY.register(collector)

    async def handle(reader, writer) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body, head = generate_latest(REGISTRY), f"200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}"
            else:
                body, head = b"GET /metrics\n", "404 Not Found\r\nContent-Type: text/plain"
            writer.write(f"HTTP/1.1 {head}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("metrics request: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, *addr)
    log.info("metrics on http://%s:%d/metrics", *addr)
    return server
