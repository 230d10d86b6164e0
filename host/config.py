"""Site configuration: one TOML file per site (primary, relay or secondary).

Example (a relay)::

    site = "osaka"
    listen = "127.0.0.1:7002"      # data port: the primary connects here
    control = "unix:control.sock"  # JSON-lines control socket (host/rcm/control.py): a Unix
                                   # socket (0600), or "host:port" = TCP with mutual TLS
    state_dir = "/var/lib/tricopy" # small state files (primary write log, restore point)
    tls = { ca = "certs/ca.pem", cert = "certs/osaka.pem", key = "certs/osaka.key" }
                                   # or tls = false: plaintext links (warned at start)

    [[group]]
    grnum = 1
    grname = "db"
    attr = "INTERMEDIARY"          # MASTER (primary) | INTERMEDIARY (relay) | RESTORE (secondary)
    peer = "127.0.0.1:7003"        # MASTER: the relay; INTERMEDIARY: the secondary;
                                   # RESTORE (optional): the relay, for a planned swap
    reverse_peer = "127.0.0.1:7001"  # INTERMEDIARY (optional): the primary's data port,
                                   # where journals go after a planned swap
    peer_site = "sapporo"          # the site name in the peer's certificate (with tls)
    upstream_site = "tokyo"        # INTERMEDIARY/RESTORE: the one site allowed to connect
    durability = "fsync"           # relay: "fsync" (default, safe) or "memory" (unsafe)
    journal = { path = "jnl1.vol", size = 16777216 }

    [[volume]]                     # primary and secondary only
    idx = 0
    group = 1
    path = "pvol0.img"
    size = 1048576
    block_size = 4096
    create = true                  # make the file (sparse, zeros) if it is missing

Relative paths are taken relative to the config file's folder.  Every
problem is a :class:`ConfigError` naming the key; a key that is not in
:data:`KEYS` is refused with the closest valid name, so a typo never falls
back silently to a default (docs/operations.md, "Site config").
"""

from __future__ import annotations

import difflib
import enum
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .wire.protocol import MAX_RING

__all__ = ["KEYS", "ConfigError", "swapped", "swap_problem", "GroupAttr", "Durability",
           "VolumeConfig", "JournalConfig",
           "GroupConfig", "NbdConfig", "SiteConfig", "TlsConfig", "LimitsConfig", "load_config",
           "parse_config", "parse_addr", "parse_control"]


class ConfigError(ValueError):
    """A site configuration that cannot be used; the message names the key."""


# Every key each table may hold.  A plain table rather than a schema library:
# the parser below already checks types and ranges with messages that name the
# key, so the only thing missing was "nothing else is allowed" — five tuples.
KEYS = {
    "site": ("site", "listen", "control", "state_dir", "heartbeat", "group", "volume", "nbd",
             "tls", "control_clients", "control_plaintext", "limits", "metrics", "native"),
    "group": ("grnum", "grname", "attr", "peer", "epoch", "durability", "journal",
              "restore_interval", "full_suspend_after", "link_suspend_after", "initial_state",
              "peer_site", "upstream_site", "reverse_peer", "relay_loss", "standby",
              "standby_site"),
    "journal": ("path", "size", "preallocate"),
    "volume": ("idx", "group", "path", "size", "block_size", "create"),
    "nbd": ("listen", "tls_cert", "tls_key", "tls_client_ca", "tls_client_crl"),
    "tls": ("ca", "cert", "key", "crl"),
    "limits": ("connections", "handshakes", "handshake_timeout", "control_line",
               "control_inflight", "control_buffered"),
}


def _only_known(table: dict, kind: str, where: str) -> None:
    """Refuse the first key of ``table`` that a ``kind`` table does not have."""
    for key in table:
        if key in KEYS[kind]:
            continue
        close = difflib.get_close_matches(key, KEYS[kind], n=1)
        hint = f"did you mean \"{close[0]}\"?" if close else \
            "valid keys: " + ", ".join(KEYS[kind])
        raise ConfigError(f"{where + ': ' if where else ''}unknown key \"{key}\" ({hint})")


class GroupAttr(enum.Enum):
    """GRATTR (patent Fig. 5, 430): the role a site plays for a journal group."""
    MASTER = "MASTER"
    INTERMEDIARY = "INTERMEDIARY"
    RESTORE = "RESTORE"


class Durability(enum.Enum):
    """When the relay ACKs a journal to the primary."""
    FSYNC = "fsync"     # after the record is fsynced (group commit): no acked write lost
    MEMORY = "memory"   # after the engine accepted it: a relay crash can lose acked writes


@dataclass(frozen=True)
class VolumeConfig:
    """A data volume (PVOL or SVOL): a file of ``size`` bytes, I/O in ``block_size`` units."""
    idx: int
    group: int
    path: Path
    size: int
    block_size: int
    create: bool = False     # make the file (sparse, all zeros) if it does not exist


@dataclass(frozen=True)
class JournalConfig:
    """The relay's journal volume (a ring of ``size`` bytes)."""
    path: Path
    size: int
    # Write the whole ring with zeros when the volume is created, so that the
    # first lap's fdatasyncs commit no block allocation (docs/store.md,
    # "Preallocation").  Off by default: it costs a write of the whole ring
    # at the first start (hours for a TiB), and through the three sites its
    # gain was not measurable on the shared test machine.
    preallocate: bool = False


@dataclass(frozen=True)
class GroupConfig:
    """One journal group as this site sees it (patent Fig. 5: GRNUM, GRNAME, GRATTR)."""
    grnum: int
    grname: str
    attr: GroupAttr
    peer: tuple[str, int] | None = None
    epoch: int = 0
    durability: Durability = Durability.FSYNC
    journal: JournalConfig | None = None
    restore_interval: float = 0.0        # secondary: seconds between restores, 0 = continuous
    full_suspend_after: float = 30.0     # primary: seconds of relay FULL before SUSP
    link_suspend_after: float = 10.0     # primary: seconds writes wait for an unreachable relay
    # primary: what the group does then (docs/operations.md, "Losing the relay"):
    # "suspend" (the default) suspends the pair and goes on taking host writes,
    # tracked in the copy bitmap; "fence" refuses them (EIO) until a resync.
    relay_loss: str = "suspend"
    # GRSTS when the site has no JNLG table row yet (docs/operations.md): "SMPL",
    # paired later by `tricopy pair create`; "PAIR" only for brand-new volumes
    # (create = true, not there yet), the one case where both sides are known equal.
    initial_state: str = "SMPL"
    # With [tls]: the site name the downstream peer's certificate must carry
    # (MASTER, INTERMEDIARY), and the one upstream site allowed to connect for
    # this group (INTERMEDIARY, RESTORE).  docs/security.md.
    peer_site: str | None = None
    upstream_site: str | None = None
    # For a planned swap (docs/operations.md, "Swap"): RESTORE, the relay's data
    # address (``peer`` is where a RESTORE site sends journals once it is the
    # writer); INTERMEDIARY, the primary site's data address (``reverse_peer``:
    # where journals go while the roles are swapped).
    reverse_peer: tuple[str, int] | None = None
    # A standby relay (docs/operations.md, "A standby relay"): MASTER, its data
    # address (``standby``) and, with [tls], the site name in its certificate;
    # RESTORE, that site name, allowed to connect once the group uses it.
    standby: tuple[str, int] | None = None
    standby_site: str | None = None


def swapped(g: GroupConfig) -> GroupConfig:
    """``g`` with the roles of a planned swap: a MASTER group as the RESTORE side,
    a RESTORE group as the writer, an INTERMEDIARY group forwarding the other
    way.  The peer names trade places (the relay stays the relay).  Raises
    :class:`ConfigError` naming the key a swap needs."""
    from dataclasses import replace
    if g.attr is GroupAttr.MASTER:
        return replace(g, attr=GroupAttr.RESTORE, upstream_site=g.peer_site)
    if g.attr is GroupAttr.RESTORE:
        if g.peer is None:
            raise ConfigError(f"group {g.grname}: a swap makes this site the writer: give its "
                              f"[[group]] peer = \"HOST:PORT\", the relay's data address")
        return replace(g, attr=GroupAttr.MASTER, peer_site=g.upstream_site)
    if g.reverse_peer is None:
        raise ConfigError(f"group {g.grname}: a swap sends journals to the primary site: give "
                          f"the relay's [[group]] reverse_peer = \"HOST:PORT\", the primary's "
                          f"data address")
    return replace(g, peer=g.reverse_peer, reverse_peer=g.peer, peer_site=g.upstream_site,
                   upstream_site=g.peer_site)


def swap_problem(site: "SiteConfig", g: GroupConfig) -> str:
    """Why this site cannot take part in a planned swap of ``g`` ("" if it can)."""
    try:
        swapped(g)
    except ConfigError as exc:
        return str(exc)
    if g.attr is GroupAttr.MASTER and site.listen is None:
        return (f"group {g.grname}: a swap makes this site the restore side: give it "
                f"listen = \"HOST:PORT\" (the relay's reverse_peer)")
    return ""


@dataclass(frozen=True)
class TlsConfig:
    """``[tls]``: the cluster CA and this site's certificate and key (PEM files),
    and the CA's revocation list (``crl``, optional; ``tricopy certs revoke``)."""
    ca: Path
    cert: Path
    key: Path
    crl: Path | None = None


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: bounds of every listener (docs/security.md, "Limits")."""
    connections: int = 128           # connections served at once, per listener
    handshakes: int = 16             # TLS handshakes in progress at once, per listener
    handshake_timeout: float = 10.0  # seconds a TLS handshake may take
    control_line: int = 8 << 20      # longest control request line (bytes)
    control_inflight: int = 64       # control requests served at once per connection
    control_buffered: int = 32 << 20  # request bytes held at once per control connection


@dataclass(frozen=True)
class NbdConfig:
    """The ``[nbd]`` table: where the site serves its volumes over NBD (docs/nbd.md).

    The primary exports its PVOLs read-write, the secondary its SVOLs
    read-only; the export name is the volume's file name without its suffix.
    With ``tls_cert``/``tls_key`` TLS is mandatory for every client; with
    ``tls_client_ca`` too, every client must present a certificate of that CA;
    with ``tls_client_crl`` (that CA's revocation list) one it revoked is refused.
    """
    listen: tuple[str, int]
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_client_crl: Path | None = None


@dataclass(frozen=True)
class SiteConfig:
    """Everything one site process needs."""
    site: str
    listen: tuple[str, int] | None
    control: tuple[str, int] | Path | None    # a Path is a Unix socket
    state_dir: Path
    groups: tuple[GroupConfig, ...]
    volumes: tuple[VolumeConfig, ...] = field(default=())
    heartbeat: float = 1.0
    nbd: NbdConfig | None = None
    tls: TlsConfig | None = None              # None: plaintext links (tls = false)
    control_clients: tuple[str, ...] = ("admin",)   # TCP control: allowed certificate names
    control_plaintext: bool = False           # TCP control without TLS: 127.0.0.1, read-only
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: tuple[str, int] | None = None    # Prometheus endpoint (docs/operations.md)
    native: bool = False     # RESTORE groups: the steady state in C (host/native/restore.py)

    def group(self, grnum: int) -> GroupConfig:
        for g in self.groups:
            if g.grnum == grnum:
                return g
        raise KeyError(grnum)

    def volumes_of(self, grnum: int) -> list[VolumeConfig]:
        return sorted((v for v in self.volumes if v.group == grnum), key=lambda v: v.idx)


def parse_addr(value: object, key: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port)."""
    if not isinstance(value, str) or ":" not in value or "\0" in value:
        raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    host, _, port = value.rpartition(":")
    try:
        num = int(port)
    except ValueError:
        raise ConfigError(f"{key}: port {port!r} is not a number") from None
    if not 0 <= num <= 65535 or not host:
        raise ConfigError(f"{key}: {value!r} is not a valid host:port")
    return host.strip("[]"), num


def parse_control(value: object, key: str, base: Path = Path(".")) -> tuple[str, int] | Path:
    """``"unix:PATH"`` -> a Path (Unix socket); ``"host:port"`` -> (host, port)."""
    if isinstance(value, str) and value.startswith("unix:"):
        if "\0" in value:
            raise ConfigError(f"{key}: a socket path cannot hold a NUL character")
        path = _path(base, value[5:])
        if not value[5:]:
            raise ConfigError(f"{key}: \"unix:\" needs a path")
        if len(str(path).encode()) > 107:
            raise ConfigError(f"{key}: socket path {path} is longer than the 107 bytes a Unix "
                              f"socket allows; choose a shorter path")
        return path
    return parse_addr(value, key)


def _get(table: dict, key: str, typ: type | tuple, where: str, default=...):
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}{key}: missing")
        return default
    value = table[key]
    # bool is an int in Python; a flag is never a valid number here.
    if isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{where}{key}: expected {_tname(typ)}, got {value!r}")
    if not isinstance(value, typ):
        raise ConfigError(f"{where}{key}: expected {_tname(typ)}, got {value!r}")
    # TOML has inf and nan: no duration, size or count here may be either
    # (found by fuzzing: heartbeat = nan passed every "> 0" check).
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}{key}: expected a finite number, got {value!r}")
    # A NUL cannot be in a name, an address or a path (the OS refuses it
    # later, with a ValueError that names no key).
    if isinstance(value, str) and "\0" in value:
        raise ConfigError(f"{where}{key}: a NUL character is not allowed, got {value!r}")
    return value


def _tname(typ) -> str:
    return " or ".join(t.__name__ for t in typ) if isinstance(typ, tuple) else typ.__name__


def _positive(value: int, key: str) -> int:
    if value <= 0:
        raise ConfigError(f"{key}: must be positive, got {value}")
    return value


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _table(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    return value


def _parse_group(t: dict, i: int, base: Path) -> GroupConfig:
    _only_known(_table(t, f"group[{i}]"), "group", f"group[{i}]")
    w = f"group[{i}]."
    grnum = _get(t, "grnum", int, w)
    if not 0 <= grnum <= 0xFFFF:
        raise ConfigError(f"{w}grnum: must fit 16 bits, got {grnum}")
    grname = _get(t, "grname", str, w)
    if not grname or len(grname.encode("utf-8")) > 32 or not grname.isascii():
        raise ConfigError(f"{w}grname: must be 1..32 ASCII characters, got {grname!r}")
    attr = _get(t, "attr", str, w)        # outside the try: a ConfigError is a ValueError too
    try:
        attr = GroupAttr(attr.upper())
    except ValueError:
        raise ConfigError(f"{w}attr: must be MASTER, INTERMEDIARY or RESTORE, "
                          f"got {attr!r}") from None
    peer = reverse_peer = None
    if attr is not GroupAttr.RESTORE or "peer" in t:     # RESTORE: the relay, for a swap
        peer = parse_addr(_get(t, "peer", str, w), f"{w}peer")
    if "reverse_peer" in t:
        if attr is not GroupAttr.INTERMEDIARY:
            raise ConfigError(f"{w}reverse_peer: only a relay (INTERMEDIARY) group forwards "
                              f"the other way after a swap")
        reverse_peer = parse_addr(_get(t, "reverse_peer", str, w), f"{w}reverse_peer")
    standby = None
    if "standby" in t:
        if attr is not GroupAttr.MASTER:
            raise ConfigError(f"{w}standby: only the primary (MASTER) connects to a standby "
                              f"relay; the secondary names it with standby_site")
        standby = parse_addr(_get(t, "standby", str, w), f"{w}standby")
    epoch = _get(t, "epoch", int, w, 0)
    if not 0 <= epoch <= 0xFFFFFFFF:
        raise ConfigError(f"{w}epoch: must fit 32 bits, got {epoch}")
    durability = _get(t, "durability", str, w, "fsync")
    try:
        durability = Durability(durability)
    except ValueError:
        raise ConfigError(f"{w}durability: must be \"fsync\" or \"memory\", "
                          f"got {durability!r}") from None
    journal = None
    if attr is GroupAttr.INTERMEDIARY:
        jt = _get(t, "journal", dict, w)
        _only_known(jt, "journal", f"{w}journal")
        jsize = _positive(_get(jt, "size", int, f"{w}journal."), f"{w}journal.size")
        if jsize % 64 or jsize < 128 or jsize > MAX_RING:
            raise ConfigError(f"{w}journal.size: must be a multiple of 64 from 128 to 2**40 "
                              f"(the engine's largest ring), got {jsize}")
        journal = JournalConfig(_path(base, _get(jt, "path", str, f"{w}journal.")), jsize,
                                _get(jt, "preallocate", bool, f"{w}journal.", False))
    interval = _get(t, "restore_interval", (int, float), w, 0.0)
    if interval < 0:
        raise ConfigError(f"{w}restore_interval: must be >= 0 seconds, got {interval}")
    full_after = _get(t, "full_suspend_after", (int, float), w, 30.0)
    if full_after < 0:
        raise ConfigError(f"{w}full_suspend_after: must be >= 0 seconds, got {full_after}")
    link_after = _get(t, "link_suspend_after", (int, float), w, 10.0)
    if link_after < 0:
        raise ConfigError(f"{w}link_suspend_after: must be >= 0 seconds, got {link_after}")
    relay_loss = _get(t, "relay_loss", str, w, "suspend")
    if relay_loss not in ("suspend", "fence"):
        raise ConfigError(f"{w}relay_loss: must be \"suspend\" (writes go on, tracked) or "
                          f"\"fence\" (writes refused), got {relay_loss!r}")
    initial_state = _get(t, "initial_state", str, w, "SMPL").upper()
    if initial_state not in ("PAIR", "SMPL"):
        raise ConfigError(f"{w}initial_state: must be \"PAIR\" or \"SMPL\", "
                          f"got {t['initial_state']!r}")
    names = {}
    for key in ("peer_site", "upstream_site", "standby_site"):
        if key in t:
            value = _get(t, key, str, w)
            if not value or len(value) > 64:
                raise ConfigError(f"{w}{key}: must be 1..64 characters, got {value!r}")
            names[key] = value
    return GroupConfig(grnum, grname, attr, peer, epoch, durability, journal,
                       float(interval), float(full_after), link_suspend_after=float(link_after),
                       initial_state=initial_state, reverse_peer=reverse_peer,
                       relay_loss=relay_loss, standby=standby, **names)


def _parse_nbd(t: dict, base: Path) -> NbdConfig:
    _only_known(t, "nbd", "nbd")
    w = "nbd."
    listen = parse_addr(_get(t, "listen", str, w), f"{w}listen")
    cert, key = t.get("tls_cert"), t.get("tls_key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{w}tls_cert, {w}tls_key: give both or neither")
    if cert is not None:
        cert = _path(base, _get(t, "tls_cert", str, w))
        key = _path(base, _get(t, "tls_key", str, w))
    client_ca = t.get("tls_client_ca")
    if client_ca is not None:
        if cert is None:
            raise ConfigError(f"{w}tls_client_ca: needs tls_cert and tls_key (TLS on)")
        client_ca = _path(base, _get(t, "tls_client_ca", str, w))
    client_crl = t.get("tls_client_crl")
    if client_crl is not None:
        # the list is only checked against (and signed by) the clients' CA
        if client_ca is None:
            raise ConfigError(f"{w}tls_client_crl: needs tls_client_ca (the CA that signed it)")
        client_crl = _path(base, _get(t, "tls_client_crl", str, w))
    return NbdConfig(listen, cert, key, client_ca, client_crl)


def _parse_tls(doc: dict, base: Path, explicit: bool) -> TlsConfig | None:
    if "tls" not in doc and not explicit:
        return None                       # a config made in code (tests, tools): plaintext
    if "tls" not in doc:
        raise ConfigError("tls: missing; give a [tls] table with ca, cert and key (make them "
                          "with `tricopy certs`), or tls = false to run the links in plaintext")
    t = doc["tls"]
    if t is False:
        return None
    if not isinstance(t, dict):
        raise ConfigError(f"tls: expected a table (ca, cert, key) or false, got {t!r}")
    _only_known(t, "tls", "tls")
    crl = _path(base, _get(t, "crl", str, "tls.")) if "crl" in t else None
    return TlsConfig(*(_path(base, _get(t, k, str, "tls.")) for k in ("ca", "cert", "key")),
                     crl=crl)


def _parse_limits(t: dict) -> LimitsConfig:
    _only_known(t, "limits", "limits")
    d = LimitsConfig()
    values = {}
    for key in KEYS["limits"]:
        typ = (int, float) if key == "handshake_timeout" else int
        v = _get(t, key, typ, "limits.", getattr(d, key))
        if v <= 0:
            raise ConfigError(f"limits.{key}: must be positive, got {v}")
        values[key] = v
    return LimitsConfig(**values)


def _check_security(site: str, control, groups, tls, clients, plaintext) -> None:
    if isinstance(control, tuple):
        if plaintext:
            if control[0] not in ("127.0.0.1", "::1", "localhost"):
                raise ConfigError(f"control_plaintext: only on 127.0.0.1, not on {control[0]}; "
                                  f"for remote administration give [tls] and control_clients")
        elif tls is None:
            raise ConfigError("control: a TCP control socket needs [tls] (mutual TLS, clients "
                              "named in control_clients); use control = \"unix:PATH\" for "
                              "local administration")
    elif plaintext:
        raise ConfigError("control_plaintext: only for a TCP control socket")
    if tls is None:
        return
    for i, g in enumerate(groups):
        if g.attr is not GroupAttr.RESTORE and g.peer_site is None:
            raise ConfigError(f"group[{i}].peer_site: missing; with [tls] give the site name "
                              f"in the certificate of the peer at {g.peer[0]}:{g.peer[1]}")
        if g.standby is not None and g.standby_site is None:
            raise ConfigError(f"group[{i}].standby_site: missing; with [tls] give the site name "
                              f"in the certificate of the standby relay at "
                              f"{g.standby[0]}:{g.standby[1]}")
        if g.attr is not GroupAttr.MASTER and g.upstream_site is None:
            what = "primary" if g.attr is GroupAttr.INTERMEDIARY else "relay"
            raise ConfigError(f"group[{i}].upstream_site: missing; with [tls] give the site "
                              f"name in the certificate of the {what} allowed to connect")


def _parse_volume(t: dict, i: int, base: Path) -> VolumeConfig:
    _only_known(_table(t, f"volume[{i}]"), "volume", f"volume[{i}]")
    w = f"volume[{i}]."
    idx = _get(t, "idx", int, w)
    if not 0 <= idx <= 0xFFFF:
        raise ConfigError(f"{w}idx: must fit 16 bits, got {idx}")
    bs = _positive(_get(t, "block_size", int, w, 4096), f"{w}block_size")
    if bs & (bs - 1) or bs < 512:
        raise ConfigError(f"{w}block_size: must be a power of two >= 512, got {bs}")
    size = _positive(_get(t, "size", int, w), f"{w}size")
    if size % bs:
        raise ConfigError(f"{w}size: {size} is not a multiple of block_size {bs}")
    return VolumeConfig(idx, _get(t, "group", int, w), _path(base, _get(t, "path", str, w)),
                        size, bs, _get(t, "create", bool, w, False))


def parse_config(doc: dict, base: Path = Path("."), *, explicit_tls: bool = False) -> SiteConfig:
    """Validate a parsed TOML document.

    ``explicit_tls`` (config files, :func:`load_config`): a document without
    ``tls`` is refused, plaintext links need ``tls = false``."""
    _only_known(doc, "site", "")
    site = _get(doc, "site", str, "")
    if not site or len(site) > 32 or not site.isascii():
        raise ConfigError(f"site: must be 1..32 ASCII characters, got {site!r}")
    listen = doc.get("listen")
    listen = parse_addr(listen, "listen") if listen is not None else None
    control = doc.get("control")
    control = parse_control(control, "control", base) if control is not None else None
    tls = _parse_tls(doc, base, explicit_tls)
    clients = _get(doc, "control_clients", list, "", ["admin"])
    if not clients or not all(isinstance(c, str) and c for c in clients):
        raise ConfigError(f"control_clients: expected a list of site names, got {clients!r}")
    plaintext = _get(doc, "control_plaintext", bool, "", False)
    limits = _parse_limits(_get(doc, "limits", dict, "", {}))
    state_dir = _path(base, _get(doc, "state_dir", str, "", "."))
    native = _get(doc, "native", bool, "", False)
    heartbeat = _get(doc, "heartbeat", (int, float), "", 1.0)
    if heartbeat <= 0:
        raise ConfigError(f"heartbeat: must be > 0 seconds, got {heartbeat}")
    groups = tuple(_parse_group(t, i, base) for i, t in enumerate(_get(doc, "group", list, "")))
    if not groups:
        raise ConfigError("group: at least one [[group]] is needed")
    if len({g.grnum for g in groups}) != len(groups):
        raise ConfigError("group: two groups share a grnum")
    volumes = tuple(_parse_volume(t, i, base) for i, t in enumerate(_get(doc, "volume", list, "", [])))
    grnums = {g.grnum for g in groups}
    seen = set()
    for i, v in enumerate(volumes):
        if v.group not in grnums:
            raise ConfigError(f"volume[{i}].group: no [[group]] with grnum {v.group}")
        if (v.group, v.idx) in seen:
            raise ConfigError(f"volume[{i}].idx: idx {v.idx} used twice in group {v.group}")
        seen.add((v.group, v.idx))
    for g in groups:
        if g.attr is not GroupAttr.INTERMEDIARY and not any(v.group == g.grnum for v in volumes):
            raise ConfigError(f"group grnum={g.grnum}: a {g.attr.value} group needs volumes")
        if g.attr is not GroupAttr.MASTER and listen is None:
            raise ConfigError(f"listen: a {g.attr.value} site must listen for its upstream peer")
    for i, g in enumerate(groups):
        # A PAIR claim is only believable for volumes this start creates (both
        # sides all zeros); the files themselves are checked at startup.
        old = [f"volume[{j}]" for j, v in enumerate(volumes) if v.group == g.grnum and not v.create]
        if g.initial_state == "PAIR" and old:
            raise ConfigError(f"group[{i}].initial_state: \"PAIR\" is only for new volumes, but "
                              f"{', '.join(old)} has no create = true; leave initial_state "
                              f"at \"SMPL\" and pair with `tricopy pair create`")
    nbd = doc.get("nbd")
    nbd = _parse_nbd(_get(doc, "nbd", dict, ""), base) if nbd is not None else None
    _one_file_one_volume(groups, volumes)
    _check_security(site, control, groups, tls, clients, plaintext)
    metrics = doc.get("metrics")
    metrics = parse_addr(metrics, "metrics") if metrics is not None else None
    ports = [("listen", listen), ("nbd.listen", nbd and nbd.listen), ("metrics", metrics)]
    if isinstance(control, tuple):
        ports.insert(1, ("control", control))
    ports = [(k, a) for k, a in ports if a is not None and a[1] != 0]
    for j, (key, addr) in enumerate(ports):
        for other, addr2 in ports[:j]:
            if addr == addr2:
                raise ConfigError(f"{key}: {addr[0]}:{addr[1]} is also {other}; "
                                  f"every socket needs its own port")
    return SiteConfig(site, listen, control, state_dir, groups, volumes, float(heartbeat), nbd,
                      tls, tuple(clients), plaintext, limits, metrics, native)


def _one_file_one_volume(groups, volumes) -> None:
    """Two volumes (or a volume and a journal) on one file would overwrite each
    other; compare resolved paths so links and ``..`` cannot hide it."""
    files = [(f"volume[{i}].path", v.path) for i, v in enumerate(volumes)]
    files += [(f"group[{i}].journal.path", g.journal.path)
              for i, g in enumerate(groups) if g.journal is not None]
    seen: dict[Path, str] = {}
    for key, path in files:
        real = path.resolve()
        if real in seen:
            raise ConfigError(f"{key} and {seen[real]} are the same file {real}; "
                              f"one file backs one volume")
        seen[real] = key


def load_config(path: str | Path) -> SiteConfig:
    """Read and validate one site's TOML file; every message starts with the file's name."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # tomllib lets these two through (found by fuzzing): bytes that are not
    # UTF-8, and arrays or tables nested deeper than the interpreter's stack.
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    try:
        return parse_config(doc, path.resolve().parent, explicit_tls=True)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
