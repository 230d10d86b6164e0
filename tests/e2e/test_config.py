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
