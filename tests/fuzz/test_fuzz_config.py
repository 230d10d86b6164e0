"""Fuzzing the site config loader (host/config.py).

Contract (the module's docstring): every problem is a :class:`ConfigError`
that names the key (``tricopy <role>`` prints it as one line); anything
else it returns is a config a site can run with.  Two layers: whole files
(mutated seed TOML, any bytes) through :func:`load_config`, and documents
built from the key table through :func:`parse_config`, with values of
every TOML type where each key is expected.
"""

from __future__ import annotations

import copy
import math
import string
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from tricopy.host import config
from tricopy.host.config import ConfigError, GroupAttr, SiteConfig
from tricopy.host.wire import protocol

from .fuzzing import corpus, corpus_ids, fuzz_settings, mutated

SEEDS = [data for _, data in corpus("config")]


def _finite(x, *, positive=False) -> None:
    assert isinstance(x, float) and math.isfinite(x) and (x > 0 if positive else x >= 0), x


def _addr(a) -> None:
    assert isinstance(a, tuple) and a[0] and "\0" not in a[0] and 0 <= a[1] <= 65535, a


def check_valid(cfg: SiteConfig) -> None:
    """What a site relies on in a config that loaded."""
    assert cfg.site and cfg.site.isascii() and len(cfg.site) <= 32
    _finite(cfg.heartbeat, positive=True)
    for a in (cfg.listen, cfg.metrics, cfg.nbd and cfg.nbd.listen):
        if a:
            _addr(a)
    if isinstance(cfg.control, tuple):
        _addr(cfg.control)
    paths = [cfg.state_dir, cfg.control if isinstance(cfg.control, Path) else None]
    paths += [getattr(cfg.tls, k, None) for k in ("ca", "cert", "key")]
    paths += [getattr(cfg.nbd, k, None) for k in ("tls_cert", "tls_key", "tls_client_ca",
                                            "tls_client_crl")]
    paths += [v.path for v in cfg.volumes] + [g.journal.path for g in cfg.groups if g.journal]
    assert not any("\0" in str(p) for p in paths if p is not None), paths
    lim = cfg.limits
    assert min(lim.connections, lim.handshakes, lim.control_line, lim.control_inflight,
               lim.control_buffered) > 0
    assert math.isfinite(lim.handshake_timeout) and lim.handshake_timeout > 0
    assert cfg.groups and len({g.grnum for g in cfg.groups}) == len(cfg.groups)
    for g in cfg.groups:
        assert 0 <= g.grnum <= 0xFFFF and 0 <= g.epoch <= 0xFFFFFFFF
        assert g.grname and g.grname.isascii() and len(g.grname) <= 32
        protocol.Hello(1, g.grnum, g.epoch, 0, g.grname, cfg.site).pack()   # fits a HELLO
        for x in (g.restore_interval, g.full_suspend_after, g.link_suspend_after):
            _finite(x)
        if g.attr is not GroupAttr.RESTORE:
            _addr(g.peer)
        if g.attr is GroupAttr.INTERMEDIARY:
            assert protocol.ring_size_ok(g.journal.size), g.journal.size
    for v in cfg.volumes:
        assert v.size > 0 and v.block_size >= 512 and v.size % v.block_size == 0
        assert v.block_size & (v.block_size - 1) == 0 and 0 <= v.idx <= 0xFFFF


def check_file(tmp_path, raw: bytes) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(raw)
    try:
        cfg = config.load_config(path)
    except ConfigError as exc:
        assert type(exc) is ConfigError       # not a ValueError under another name
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc).strip()
        return
    check_valid(cfg)


@pytest.mark.parametrize("raw", corpus_ids("config"))
def test_config_corpus(tmp_path, raw):
    check_file(tmp_path, raw)


@fuzz_settings(500)
@given(raw=mutated(SEEDS, max_mutations=4) | st.binary(max_size=64))
def test_config_file_any_bytes(tmp_path, raw):
    check_file(tmp_path, raw)


# -- documents made from the key table ----------------------------------------------------

_SCALARS = (st.integers()
            | st.sampled_from((0, -1, 1, 64, 128, 4096, 65535, 65536, 1 << 32, 1 << 40,
                               (1 << 40) + 64, 1 << 64))
            | st.floats() | st.booleans()
            | st.text(string.printable, max_size=12)
            | st.sampled_from(("127.0.0.1:7002", "[::1]:0", "host:99999", ":1", "unix:", "unix:x",
                               "unix:" + "a" * 120, "MASTER", "INTERMEDIARY", "restore", "PAIR",
                               "fsync", "memory", "a\0b", "é", "x" * 40)))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(string.ascii_lowercase, max_size=6), inner,
                                         max_size=3), max_leaves=6)


_GOOD = [tomllib.loads(raw.decode()) for name, raw in corpus("config") if name.startswith("seed-")]


def _slots(doc: dict) -> list[tuple[dict, str, str]]:
    """Every (table, key, kind) a value can be put at: each key of the key
    table in each table of the document, present or not."""
    out = [(doc, k, "site") for k in config.KEYS["site"]]
    for kind in ("group", "volume"):
        tables = doc.get(kind, [])
        for t in tables if isinstance(tables, list) else []:
            if not isinstance(t, dict):
                continue
            out += [(t, k, kind) for k in config.KEYS[kind]]
            if kind == "group" and isinstance(t.get("journal"), dict):
                out += [(t["journal"], k, "journal") for k in config.KEYS["journal"]]
    for kind in ("nbd", "tls", "limits"):
        if isinstance(doc.get(kind), dict):
            out += [(doc[kind], k, kind) for k in config.KEYS[kind]]
    return out


@st.composite
def documents(draw) -> dict:
    """A seed config with one to three keys given any value or removed, and
    now and then a key no table has."""
    doc = copy.deepcopy(draw(st.sampled_from(_GOOD)))
    for _ in range(draw(st.integers(1, 3))):
        table, key, _ = draw(st.sampled_from(_slots(doc)))
        if draw(st.integers(0, 4)) == 0:
            table.pop(key, None)
        else:
            table[key] = draw(_VALUES)
    if draw(st.integers(0, 9)) == 0:
        table, _, _ = draw(st.sampled_from(_slots(doc)))
        table[draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))] = 1
    return doc


@fuzz_settings(700)
@given(doc=documents(), explicit=st.booleans())
def test_parse_config_any_document(tmp_path, doc, explicit):
    try:
        cfg = config.parse_config(doc, tmp_path, explicit_tls=explicit)
    except ConfigError as exc:
        assert type(exc) is ConfigError and str(exc)
        return
    check_valid(cfg)
