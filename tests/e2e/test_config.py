"""Site configs: a bad one is a ConfigError that names the key; a site that
cannot start says so in one line and exits with 2."""

import os
import socket
import subprocess
import sys

import pytest

from tricopy.host.config import ConfigError, Durability, GroupAttr, load_config, parse_config
from tricopy.host.rcm.jnlg import JnlgTable
from tricopy.host.sites_cli import EXIT_STARTUP, StartupError, prepare
from tricopy.host.journal.store import JournalStore
from tricopy.host.disk.volume import Volume, VolumeError

from .cluster import free_port

RELAY = {"site": "r", "listen": "127.0.0.1:7002", "tls": False,
         "group": [{"grnum": 1, "grname": "g", "attr": "INTERMEDIARY", "peer": "127.0.0.1:7003",
                    "journal": {"path": "j.vol", "size": 1 << 20}}]}


def test_good_relay_config(tmp_path):
    cfg = parse_config(RELAY, tmp_path)
    g = cfg.groups[0]
    assert g.attr is GroupAttr.INTERMEDIARY and g.durability is Durability.FSYNC
    assert g.journal.path == tmp_path / "j.vol" and g.peer == ("127.0.0.1", 7003)


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("site"), "site: missing"),
    (lambda d: d.update(listen="nowhere"), "listen:"),
    (lambda d: d["group"][0].update(attr="BOSS"), "group[0].attr"),
    (lambda d: d["group"][0].update(durability="maybe"), "group[0].durability"),
    (lambda d: d["group"][0]["journal"].update(size=1000), "group[0].journal.size"),
    (lambda d: d["group"][0].update(grnum=True), "group[0].grnum"),
    (lambda d: d["group"][0].pop("peer"), "group[0].peer: missing"),
    (lambda d: d["group"][0].update(restore_interval=-1), "group[0].restore_interval"),
    (lambda d: d.update(volume=[{"idx": 0, "group": 9, "path": "v", "size": 4096}]),
     "volume[0].group"),
    (lambda d: d.update(volume=[{"idx": 0, "group": 1, "path": "v", "size": 5000}]),
     "volume[0].size"),
    (lambda d: d.update(volume=[{"idx": 0, "group": 1, "path": "v", "size": 8192,
                                 "block_size": 1000}]), "volume[0].block_size"),
    # a standby relay is named by the primary (its address) and the secondary (its name)
    (lambda d: d["group"][0].update(standby="127.0.0.1:7009"), "group[0].standby: only the"),
    (lambda d: d["group"][0].update(standby_site=""), "group[0].standby_site"),
])
def test_bad_config_names_the_key(tmp_path, change, key):
    doc = {**RELAY, "group": [dict(RELAY["group"][0], journal=dict(RELAY["group"][0]["journal"]))]}
    change(doc)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc, tmp_path)


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("site = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


# -- unknown keys: a typo is refused with the closest valid name ---------------

SEC = {"site": "s", "listen": "127.0.0.1:7003", "tls": False,
       "group": [{"grnum": 1, "grname": "g", "attr": "RESTORE"}],
       "volume": [{"idx": 0, "group": 1, "path": "v0.img", "size": 4096}]}


def _copy(doc):
    """A deep enough copy of RELAY or SEC for one test to change."""
    out = {k: [dict(t) for t in v] if isinstance(v, list) else v for k, v in doc.items()}
    for g in out["group"]:
        if "journal" in g:
            g["journal"] = dict(g["journal"])
    return out


@pytest.mark.parametrize("base, change, where, key, guess", [
    (RELAY, lambda d: d.update(lisen="127.0.0.1:1"), "", "lisen", "listen"),
    (RELAY, lambda d: d["group"][0].update(durabilty="memory"), "group[0]: ", "durabilty",
     "durability"),
    (RELAY, lambda d: d["group"][0]["journal"].update(szie=1 << 20), "group[0].journal: ",
     "szie", "size"),
    (SEC, lambda d: d["volume"][0].update(blocksize=4096), "volume[0]: ", "blocksize",
     "block_size"),
    (SEC, lambda d: d["volume"][0].update(craete=True), "volume[0]: ", "craete", "create"),
    (SEC, lambda d: d.update(nbd={"listen": "127.0.0.1:10809", "tls_crt": "c"}), "nbd: ",
     "tls_crt", "tls_cert"),
    (SEC, lambda d: d.update(nbd={"listen": "127.0.0.1:10809", "tls_client_clr": "c"}), "nbd: ",
     "tls_client_clr", "tls_client_crl"),
])
def test_unknown_key_is_refused_with_a_guess(tmp_path, base, change, where, key, guess):
    doc = _copy(base)
    change(doc)
    with pytest.raises(ConfigError) as err:
        parse_config(doc, tmp_path)
    assert str(err.value) == f'{where}unknown key "{key}" (did you mean "{guess}"?)'


def test_unknown_key_without_a_close_name_lists_the_valid_ones(tmp_path):
    doc = _copy(SEC)
    doc["group"][0]["zzzz"] = 1
    with pytest.raises(ConfigError, match=r'group\[0\]: unknown key "zzzz" \(valid keys: grnum, '):
        parse_config(doc, tmp_path)


def test_load_config_names_the_file(tmp_path):
    f = tmp_path / "relay.toml"
    f.write_text('site = "r"\nlisten = "127.0.0.1:7002"\ntls = false\n[[group]]\ngrnum = 1\ngrname = "g"\n'
                 'attr = "INTERMEDIARY"\npeer = "127.0.0.1:7003"\ndurabilty = "fsync"\n'
                 'journal = { path = "j.vol", size = 1048576 }\n')
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == (f'{f}: group[0]: unknown key "durabilty" '
                              f'(did you mean "durability"?)')


# -- one file, one volume -------------------------------------------------------

def test_two_volumes_on_one_file_are_refused(tmp_path):
    doc = _copy(SEC)
    doc["volume"].append({"idx": 1, "group": 1, "path": "sub/../v0.img", "size": 4096})
    with pytest.raises(ConfigError, match=r"volume\[1\]\.path and volume\[0\]\.path are the same"):
        parse_config(doc, tmp_path)


def test_a_volume_through_a_symlink_is_the_same_file(tmp_path):
    (tmp_path / "v0.img").write_bytes(bytes(4096))
    (tmp_path / "alias.img").symlink_to(tmp_path / "v0.img")
    doc = _copy(SEC)
    doc["volume"].append({"idx": 1, "group": 1, "path": "alias.img", "size": 4096})
    with pytest.raises(ConfigError, match=r"volume\[1\]\.path and volume\[0\]\.path"):
        parse_config(doc, tmp_path)


def test_a_volume_on_the_journal_file_is_refused(tmp_path):
    doc = _copy(RELAY)
    doc["group"].append({"grnum": 2, "grname": "m", "attr": "MASTER", "peer": "127.0.0.1:7002"})
    doc["volume"] = [{"idx": 0, "group": 2, "path": "j.vol", "size": 4096}]
    with pytest.raises(ConfigError, match=r"group\[0\]\.journal\.path and volume\[0\]\.path"):
        parse_config(doc, tmp_path)


def test_two_sockets_on_one_port_are_refused(tmp_path):
    doc = _copy(SEC)
    doc["control"] = doc["listen"]
    doc["control_plaintext"] = True
    with pytest.raises(ConfigError, match="control: 127.0.0.1:7003 is also listen"):
        parse_config(doc, tmp_path)


# -- create and initial_state ---------------------------------------------------

def test_defaults_create_false_and_smpl(tmp_path):
    cfg = parse_config(_copy(SEC), tmp_path)
    assert cfg.volumes[0].create is False and cfg.groups[0].initial_state == "SMPL"
    doc = _copy(SEC)
    doc["volume"][0]["create"] = True
    assert parse_config(doc, tmp_path).volumes[0].create is True


def test_create_must_be_a_bool(tmp_path):
    doc = _copy(SEC)
    doc["volume"][0]["create"] = 1
    with pytest.raises(ConfigError, match=r"volume\[0\]\.create: expected bool"):
        parse_config(doc, tmp_path)


def test_pair_needs_create_on_every_volume(tmp_path):
    doc = _copy(SEC)
    doc["group"][0]["initial_state"] = "PAIR"
    doc["volume"].append({"idx": 1, "group": 1, "path": "v1.img", "size": 4096, "create": True})
    with pytest.raises(ConfigError, match=r'group\[0\]\.initial_state: "PAIR" is only for new '
                                          r"volumes, but volume\[0\] has no create = true"):
        parse_config(doc, tmp_path)
    doc["volume"][0]["create"] = True
    assert parse_config(doc, tmp_path).groups[0].initial_state == "PAIR"


# -- startup: checks on the files and ports, one line and exit 2 ----------------

def _site_toml(tmp_path, role="secondary", *, listen=None, volume="", group="", top="",
               name="site.toml"):
    """A one-group config for ``role`` in ``tmp_path``; returns its path."""
    attr = {"primary": "MASTER", "relay": "INTERMEDIARY", "secondary": "RESTORE"}[role]
    text = (f'site = "{role}"\nlisten = "127.0.0.1:{listen or free_port()}"\n'
            f'control = "127.0.0.1:{free_port()}"\ncontrol_plaintext = true\ntls = false\n'
            f'state_dir = "state"\n{top}'
            f'[[group]]\ngrnum = 1\ngrname = "g"\nattr = "{attr}"\n{group}')
    if role == "primary":
        text += f'peer = "127.0.0.1:{free_port()}"\n'
    if role == "relay":
        text += (f'peer = "127.0.0.1:{free_port()}"\n'
                 'journal = { path = "jnl.vol", size = 1048576 }\n')
    else:
        text += ('[[volume]]\nidx = 0\ngroup = 1\npath = "vol0.img"\nsize = 1048576\n'
                 + volume)
    path = tmp_path / name
    path.write_text(text)
    return path


def _start(role, config, timeout=15):
    """Run a site that is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "tricopy.host.sites_cli", role, "--config",
                           str(config)], capture_output=True, text=True, timeout=timeout,
                          cwd=config.parent)


def _refused(out, config, *needles, one_line=True):
    """Exit 2, no traceback, and (for a refusal before the site runs) exactly
    one line on stderr: ``tricopy <role>: <config>: <what> — <what to do>``."""
    assert out.returncode == EXIT_STARTUP, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    if one_line:
        assert out.stderr.count("\n") == 1 and not out.stdout, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tricopy "), last
    assert str(config) in last and " — " in last, last
    for needle in needles:
        assert needle in last, last
    return last


def test_missing_volume_without_create(tmp_path):
    config = _site_toml(tmp_path)
    out = _start("secondary", config)
    line = _refused(out, config, "vol0.img does not exist", "create = true")
    assert line.startswith(f"tricopy secondary: {config}: ")
    assert not (tmp_path / "vol0.img").exists()


def test_create_makes_a_sparse_volume(tmp_path):
    cfg = load_config(_site_toml(tmp_path, volume="create = true\n"))
    prepare(cfg, "secondary")
    st = os.stat(tmp_path / "vol0.img")
    assert st.st_size == 1 << 20 and st.st_blocks == 0


def test_wrong_size_volume(tmp_path):
    config = _site_toml(tmp_path, volume="create = true\n")
    (tmp_path / "vol0.img").write_bytes(bytes(8192))
    out = _start("secondary", config)
    _refused(out, config, "is 8192 bytes, the config says 1048576")
    assert (tmp_path / "vol0.img").stat().st_size == 8192    # not "repaired"


def test_missing_volume_folder(tmp_path):
    config = _site_toml(tmp_path, volume="create = true\n")
    config.write_text(config.read_text().replace('"vol0.img"', '"nodir/vol0.img"'))
    _refused(_start("secondary", config), config, "nodir does not exist")


def test_missing_state_dir_parent(tmp_path):
    config = _site_toml(tmp_path, volume="create = true\n")
    config.write_text(config.read_text().replace('"state"', '"gone/state"'))
    _refused(_start("secondary", config), config, "state_dir", "gone does not exist")
    assert not (tmp_path / "gone").exists()


def test_busy_listen_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = _site_toml(tmp_path, "relay", listen=port)
        out = _start("relay", config)
    _refused(out, config, f"listen 127.0.0.1:{port}", "another process listens there")


def test_unknown_key_at_start(tmp_path):
    config = _site_toml(tmp_path, "relay", group='durabilty = "memory"\n')
    out = _start("relay", config)
    _refused(out, config, 'unknown key "durabilty" (did you mean "durability"?)')


def test_wrong_config_for_the_role(tmp_path):
    config = _site_toml(tmp_path, "relay")
    _refused(_start("primary", config), config, 'no [[group]] with attr = "MASTER"')


def test_journal_that_does_not_match_is_refused_by_the_running_relay(tmp_path):
    # Found by the relay itself (RelayError in Relay.run), not by prepare().
    config = _site_toml(tmp_path, "relay")
    JournalStore.create(tmp_path / "jnl.vol", 1 << 19).close()
    # The site logged its start line before it found the mismatch: not one line.
    _refused(_start("relay", config), config, "jnl.vol is 524288 bytes, config says 1048576",
             one_line=False)


def test_hard_linked_volumes_are_one_file(tmp_path):
    config = _site_toml(tmp_path, volume="create = true\n")
    config.write_text(config.read_text() + '[[volume]]\nidx = 1\ngroup = 1\npath = "link.img"\n'
                      'size = 1048576\n')
    (tmp_path / "vol0.img").write_bytes(bytes(1 << 20))
    os.link(tmp_path / "vol0.img", tmp_path / "link.img")
    _refused(_start("secondary", config), config, "are the same file")


# -- initial_state PAIR: only over volumes that hold no data --------------------

PAIR = 'initial_state = "PAIR"\n'


def test_pair_over_data_is_refused(tmp_path):
    config = _site_toml(tmp_path, group=PAIR, volume="create = true\n")
    with open(tmp_path / "vol0.img", "wb") as f:
        f.truncate(1 << 20)
        f.write(b"data")
    out = _start("secondary", config)
    _refused(out, config, "already holds data", "tricopy pair create")
    assert not (tmp_path / "state" / "jnlg.json").exists()


def test_pair_over_an_existing_journal_is_refused(tmp_path):
    config = _site_toml(tmp_path, "relay", group=PAIR)
    JournalStore.create(tmp_path / "jnl.vol", 1 << 20).close()
    with pytest.raises(StartupError, match="journal .* already exists"):
        prepare(load_config(config), "relay")


def test_pair_over_new_volumes_is_accepted(tmp_path):
    cfg = load_config(_site_toml(tmp_path, group=PAIR, volume="create = true\n"))
    prepare(cfg, "secondary")
    prepare(cfg, "secondary")     # made but never written (a start that failed later): still new


def test_pair_recorded_in_the_jnlg_table_is_not_asked_again(tmp_path):
    # A restart: the group's row exists, so its state comes from the table.
    cfg = load_config(_site_toml(tmp_path, group=PAIR, volume="create = true\n"))
    prepare(cfg, "secondary")
    (tmp_path / "state").mkdir()
    table = JnlgTable.load(tmp_path / "state" / "jnlg.json")
    table.ensure(1, "g", "RESTORE", 0, "PAIR")
    table.save()
    with open(tmp_path / "vol0.img", "r+b") as f:
        f.write(b"restored data")
    prepare(cfg, "secondary")
    # ... but a row of another group of that number is not this group's row
    renamed = _site_toml(tmp_path, group=PAIR, volume="create = true\n", name="renamed.toml")
    renamed.write_text(renamed.read_text().replace('grname = "g"', 'grname = "h"'))
    with pytest.raises(StartupError, match="already holds data"):
        prepare(load_config(renamed), "secondary")


def test_volume_create_keyword(tmp_path):
    with pytest.raises(VolumeError, match="v.img does not exist .* create = true"):
        Volume(tmp_path / "v.img", 8192)
    with pytest.raises(VolumeError, match="folder .*nodir does not exist"):
        Volume(tmp_path / "nodir" / "v.img", 8192, create=True)
    Volume(tmp_path / "v.img", 8192, create=True).close()
    assert (tmp_path / "v.img").stat().st_size == 8192
    Volume(tmp_path / "v.img", 8192).close()      # it exists now: create is not needed


def test_one_board_serves_one_group(tmp_path):
    """Two journal groups behind one engine URL would share its ring and SEQ#:
    refused at start, naming the groups and what to do."""
    config = _site_toml(tmp_path, "relay")
    config.write_text(config.read_text() + (
        f'[[group]]\ngrnum = 2\ngrname = "h"\nattr = "INTERMEDIARY"\n'
        f'peer = "127.0.0.1:{free_port()}"\njournal = {{ path = "jnl2.vol", size = 1048576 }}\n'))
    out = subprocess.run([sys.executable, "-m", "tricopy.host.sites_cli", "relay", "--config",
                          str(config), "--engine", "port", "--engine-url",
                          "socket://127.0.0.1:9"], capture_output=True, text=True, timeout=15,
                         cwd=config.parent)
    _refused(out, config, "2 groups (g, h)", "one relay process per group")


def test_a_standby_relay_needs_its_site_name_with_tls(tmp_path):
    """With TLS the primary must know the standby's certificate name, as for the relay."""
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "p.pem", "p.key"))
    for f in (ca, cert, key):
        f.write_text("")
    doc = {"site": "p", "tls": {"ca": str(ca), "cert": str(cert), "key": str(key)},
           "group": [{"grnum": 1, "grname": "g", "attr": "MASTER", "peer": "127.0.0.1:7002",
                      "peer_site": "r", "standby": "127.0.0.1:7009"}],
           "volume": [{"idx": 0, "group": 1, "path": "v", "size": 8192}]}
    with pytest.raises(ConfigError, match=r"group\[0\]\.standby_site: missing"):
        parse_config(doc, tmp_path)
    doc["group"][0]["standby_site"] = "r2"
    g = parse_config(doc, tmp_path).groups[0]
    assert g.standby == ("127.0.0.1", 7009) and g.standby_site == "r2"


# -- [nbd] tls_client_crl: the NBD clients' revocation list --------------------

def test_nbd_client_crl_needs_the_client_ca(tmp_path):
    doc = _copy(SEC)
    doc["nbd"] = {"listen": "127.0.0.1:10809", "tls_cert": "s.pem", "tls_key": "s.key",
                  "tls_client_crl": "crl.pem"}
    with pytest.raises(ConfigError, match=r"^nbd\.tls_client_crl: needs tls_client_ca"):
        parse_config(doc, tmp_path)
    doc["nbd"]["tls_client_ca"] = "ca.pem"
    nbd = parse_config(doc, tmp_path).nbd
    assert nbd.tls_client_crl == tmp_path / "crl.pem" and nbd.tls_client_ca == tmp_path / "ca.pem"


def test_a_client_crl_of_another_ca_stops_the_start(tmp_path):
    """Read at start like tls.crl: a list the clients' CA did not sign is one line."""
    from tricopy.host.tools.certs import make_certs
    pki = make_certs(tmp_path / "pki", ["secondary"])
    other = make_certs(tmp_path / "other", [])
    nbd = (f'nbd = {{ listen = "127.0.0.1:{free_port()}", tls_cert = "{pki}/secondary.pem", '
           f'tls_key = "{pki}/secondary.key", tls_client_ca = "{pki}/ca.pem", '
           f'tls_client_crl = "{other}/crl.pem" }}\n')
    config = _site_toml(tmp_path, top=nbd)
    _refused(_start("secondary", config), config,
             f"nbd.tls_client_crl {other}/crl.pem is not signed by the CA in {pki}/ca.pem",
             "tricopy certs revoke")
