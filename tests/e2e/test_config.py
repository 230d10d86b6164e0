"""Site configs: a bad one is a ConfigError that names the key."""

import pytest

from tricopy.host.config import ConfigError, Durability, GroupAttr, load_config, parse_config

RELAY = {"site": "r", "listen": "127.0.0.1:7002",
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

SEC = {"site": "s", "listen": "127.0.0.1:7003",
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
    f.write_text('site = "r"\nlisten = "127.0.0.1:7002"\n[[group]]\ngrnum = 1\ngrname = "g"\n'
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
