"""The config loader: defaults, every key's type and range checks, typos, secrets from the
environment, masking, and where the file is looked for."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from changelog import config as cfgmod
from changelog.config import Config, Secret, load_config, parse_config
from changelog.errors import ConfigError


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_config(p, env=env or {})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- defaults


def test_defaults_are_the_embedded_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cfgmod, "DEFAULT_PATH", tmp_path / "absent.toml")
    cfg = load_config(None, env={})
    assert cfg.path is None
    assert cfg.index.backend == "sqlite"
    assert cfg.index.path == str(tmp_path / "rgw-changelog.db")
    assert cfg.index.shards == 16 and cfg.index.mode == "write" and cfg.index.prefix == "changelog"
    assert cfg.target.url == f"file://{tmp_path}/changelog-logs/"
    assert cfg.target.compression == "none"
    assert cfg.source.buckets == ("*",) and cfg.source.all_buckets
    assert cfg.api.listen == "127.0.0.1:9480" and cfg.api.port == 9480 and cfg.api.host == "127.0.0.1"
    assert cfg.collector.part_bytes == 8 * 1024 * 1024
    # Sizes come from the bucket index by default (no HEAD); the follower's lease has its own TTL.
    assert cfg.source.object_info == "index" and cfg.source.index_pool == "default.rgw.buckets.index" and cfg.source.lease_ttl == 30.0
    assert cfg.source.trim_logs is True
    assert cfg.logging.level == "INFO" and cfg.logging.file is None


def test_full_example_loads(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
[index]
backend = "rados"
ceph_conf = "/etc/ceph/ceph.conf"
keyring = "/etc/ceph/ceph.client.admin.keyring"
pool = "changelog"
namespace = "zone-a"
shards = 64
mode = "object"
prefix = "cl"

[source]
endpoint = "http://127.0.0.1:7480/"
access_key = "AK"
secret_key = "SK"
buckets = ["photos", "docs"]
prefixes = { photos = ["2026/", "raw/"], docs = "reports/" }
exclude_buckets = ["tmp"]
poll_interval = 0.5
object_info = true
lease_ttl = 12

[target]
url = "s3://change-logs/zone-a/"
compression = "zstd"
addressing_style = "virtual"

[collector]
interval = 10
settle = 2.5
lease_ttl = 20
roll_bytes = "128MiB"
roll_entries = 50000
roll_seconds = 30
part_bytes = "16 MiB"

[api]
listen = "[::1]:9999"
allow_from = ["10.0.0.0/8", "::1"]

[backup]
url = "s3://backups/"
keep_days = 7
minimum_backups = 2
maximum_backups = 10

[logging]
level = "debug"
file = "/var/log/rgw-changelog.log"
""",
    )
    assert cfg.index.backend == "rados" and cfg.index.shards == 64 and cfg.index.mode == "object"
    assert cfg.source.endpoint == "http://127.0.0.1:7480"
    assert cfg.source.prefixes == {"photos": ("2026/", "raw/"), "docs": ("reports/",)}
    assert cfg.source.includes("photos", "raw/x.jpg")
    assert not cfg.source.includes("photos", "other/x.jpg")
    assert cfg.source.includes("docs")
    assert cfg.source.object_info == "head"  # the former flag: true asked for HEADs
    assert cfg.source.lease_ttl == 12.0 and isinstance(cfg.source.lease_ttl, float)
    assert not cfg.source.includes("tmp") and not cfg.source.includes("elsewhere")
    assert cfg.collector.interval == 10.0 and isinstance(cfg.collector.interval, float)
    assert cfg.collector.roll_bytes == 128 * 1024 * 1024 and cfg.collector.part_bytes == 16 * 1024 * 1024
    assert cfg.api.port == 9999 and cfg.api.host == "::1"
    assert cfg.logging.level == "DEBUG"
    # The target and backup default to the source's radosgw and credentials.
    assert cfg.target.endpoint == "http://127.0.0.1:7480"
    assert cfg.target.secret_key is not None and cfg.target.secret_key.reveal() == "SK"
    assert cfg.backup.access_key is not None and cfg.backup.access_key.reveal() == "AK"


def test_exclude_wins_over_all_buckets(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[source]\nexclude_buckets = ["logs"]\n')
    assert cfg.source.includes("anything") and not cfg.source.includes("logs")


# --------------------------------------------------------------------------- bad input, one line each


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[collector]\nsettle = "ten"\n', 'collector.settle must be a number (got "ten")'),
        ("[collector]\nsettle = true\n", "collector.settle must be a number (got true)"),
        ("[collector]\nsettle = -1\n", "collector.settle must be at least 0 (got -1)"),
        ("[collector]\nsettle = nan\n", "collector.settle must be a number (got nan)"),
        ("[collector]\nlease_ttl = 0.5\n", "collector.lease_ttl must be at least 1"),
        ("[collector]\ninterval = [1]\n", "collector.interval must be a number (got a list)"),
        ("[collector]\nroll_entries = 1.5\n", "collector.roll_entries must be an integer (got 1.5)"),
        ("[collector]\nroll_entries = 0\n", "collector.roll_entries must be at least 1"),
        ('[collector]\nroll_bytes = "lots"\n', 'collector.roll_bytes must be a size in bytes, or a string such as "64MiB"'),
        ('[collector]\nroll_bytes = "12 parsecs"\n', "collector.roll_bytes must be a size"),
        ("[collector]\npart_bytes = 10\n", "collector.part_bytes must be at least 1024 bytes"),
        ("[index]\nshards = 0\n", "index.shards must be at least 1 (got 0)"),
        ("[index]\nshards = 5000\n", "index.shards must be at most 4096"),
        ('[index]\nshards = "16"\n', 'index.shards must be an integer (got "16")'),
        ('[index]\nbackend = "radso"\n', "index.backend must be one of sqlite, rados (got \"radso\") (did you mean 'rados'?)"),
        ('[index]\nmode = "objects"\n', "index.mode must be one of write, object"),
        ("[index]\npath = 3\n", "index.path must be a string (got 3)"),
        ('[index]\nprefix = "a/b"\n', "index.prefix may hold only letters, digits and _.:-"),
        ('[index]\npool = ""\n', "index.pool must not be empty"),
        ('[index]\nclient_name = "admin"\n', 'index.client_name may hold only "client." and a name'),
        ('[index]\nceph_conf = ""\n', "index.ceph_conf must not be empty"),
        ('[source]\nendpoint = "localhost:7480"\n', "source.endpoint must be an http:// or https:// URL"),
        ('[source]\nendpoint = "ftp://x"\n', "source.endpoint must be an http:// or https:// URL"),
        ('[source]\nbuckets = "photos"\n', 'source.buckets must be a list of strings (got "photos")'),
        ('[source]\nbuckets = ["a", 1]\n', "source.buckets[1] must be a non-empty string (got 1)"),
        ('[source]\nbuckets = ["a", ""]\n', 'source.buckets[1] must be a non-empty string (got "")'),
        ('[source]\nbuckets = ["*", "a"]\n', 'source.buckets: "*" means every bucket and must stand alone'),
        ('[source]\nprefixes = ["a"]\n', "source.prefixes must be a table of bucket"),
        ("[source]\nprefixes = { a = 1 }\n", "source.prefixes.a must be a list of key prefixes (got 1)"),
        ('[source]\naccess_key = "AK"\n', "source.access_key is set but source.secret_key is not"),
        ('[source]\nsecret_key = "SK"\n', "source.secret_key is set but source.access_key is not"),
        ("[source]\npoll_interval = 0\n", "source.poll_interval must be at least 0.05"),
        ('[source]\nobject_info = "yes"\n', 'source.object_info must be one of index, head, none (got "yes")'),
        ("[source]\nobject_info = 1\n", "source.object_info must be a string (got 1)"),
        ('[source]\nobject_info = "HEAD"\n', 'source.object_info must be one of index, head, none (got "HEAD")'),
        ('[source]\ntrim_logs = "no"\n', 'source.trim_logs must be true or false (got "no")'),
        ("[source]\nlease_ttl = 0.5\n", "source.lease_ttl must be at least 1 (got 0.5)"),
        ('[source]\nlease_ttl = "30s"\n', 'source.lease_ttl must be a number (got "30s")'),
        ('[target]\nurl = "/var/logs"\n', "target.url must start with s3:// or file://"),
        ('[target]\nurl = "s3://"\n', 'target.url must be "s3://bucket/prefix/" with a valid bucket name'),
        ('[target]\nurl = "s3://bad bucket!/x"\n', "target.url must be \"s3://bucket/prefix/\""),
        ('[target]\nurl = "file://"\n', "target.url must name a directory"),
        ('[target]\ncompression = "lz4"\n', "target.compression must be one of none, gzip, zstd"),
        ('[target]\ncompression = "gz"\n', "(did you mean 'gzip'?)"),
        ('[target]\naddressing_style = "host"\n', "target.addressing_style must be one of path, virtual, auto"),
        (
            '[target]\nurl = "s3://b/p/"\n[collector]\npart_bytes = "1MiB"\n',
            "collector.part_bytes must be at least 5242880 bytes (5 MiB) with an s3:// target",
        ),
        ('[api]\nlisten = "9480"\n', 'api.listen must be "ADDRESS:PORT"'),
        ('[api]\nlisten = "127.0.0.1:99999"\n', 'api.listen must be "ADDRESS:PORT"'),
        ('[api]\nlisten = "example.com:80"\n', 'api.listen must be "ADDRESS:PORT"'),
        ('[api]\nallow_from = "127.0.0.1"\n', "api.allow_from must be a list of strings"),
        ('[api]\nallow_from = ["10.0.0.0/33"]\n', 'api.allow_from[0] must be an address or network such as "10.0.0.0/8"'),
        ("[backup]\nkeep_days = -1\n", "backup.keep_days must be at least 0"),
        ("[backup]\nminimum_backups = 5\nmaximum_backups = 2\n", "backup.minimum_backups (5) must not exceed"),
        ('[logging]\nlevel = "LOUD"\n', "logging.level must be one of DEBUG, INFO, WARNING, ERROR"),
        ("index = 3\n", "[index] must be a table (got 3)"),
        ('shards = 3\n', "unknown top-level key shards (keys go in a section: did you mean [index] shards?)"),
        ("[colector]\nsettle = 1\n", "unknown section [colector] (did you mean 'collector'?)"),
        ("[collector]\nsettel = 1\n", "unknown key collector.settel (did you mean 'settle'?)"),
        ("[target]\nsecret = 1\n", "unknown key target.secret (did you mean 'secret_key'?)"),
        ("[target]\nzzz = 1\n", "unknown key target.zzz"),
        # In a table of a list (a replication site): the keys of a site are suggested.
        ('[[replication.sites]]\nname = "b"\nendpoint = "http://h:1"\nacces_key = "x"\n',
         "unknown key replication.sites[0].acces_key (did you mean 'access_key'?)"),
        ("[index]\n[index.sub]\nx = 1\n", "unknown key index.sub"),
        ('[collector]\nsettle = 1\n[collector]\n', "is not valid TOML"),
        ("[collector\n", "is not valid TOML: Expected ']'"),
        ("settle = \n", "is not valid TOML"),
    ],
)
def test_bad_input_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


def test_index_shards_float_is_refused(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[index]\nshards = 16.0\n") == "index.shards must be an integer (got 16.0)"


def test_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    msg = error_of(tmp_path, f'[collector]\nsettle = "{"x" * 500}"\n')
    assert len(msg) < 150 and msg.endswith('...)')


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml not found$"):
        load_config(tmp_path / "nope.toml", env={})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})


def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_bytes(b"[index]\npath = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(p, env={})


def test_env_var_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "from-env.toml"
    p.write_text("[index]\nshards = 4\n")
    assert load_config(None, env={"RGW_CHANGELOG_CONFIG": str(p)}).index.shards == 4
    with pytest.raises(ConfigError, match=r"not found \(from \$RGW_CHANGELOG_CONFIG\)"):
        load_config(None, env={"RGW_CHANGELOG_CONFIG": str(tmp_path / "gone.toml")})


def test_explicit_path_beats_env(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[index]\nshards = 2\n")
    b.write_text("[index]\nshards = 3\n")
    assert load_config(a, env={"RGW_CHANGELOG_CONFIG": str(b)}).index.shards == 2


def test_system_file_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "system.toml"
    p.write_text("[index]\nshards = 5\n")
    monkeypatch.setattr(cfgmod, "DEFAULT_PATH", p)
    cfg = load_config(None, env={})
    assert cfg.index.shards == 5 and cfg.path == str(p)


# --------------------------------------------------------------------------- secrets


def test_secret_from_environment(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        '[source]\naccess_key_env = "MY_AK"\nsecret_key_env = "MY_SK"\n',
        env={"MY_AK": "AKIA", "MY_SK": "s3cr3t-value"},
    )
    assert cfg.source.secret_key is not None and cfg.source.secret_key.reveal() == "s3cr3t-value"
    assert cfg.source.secret_key.source == "$MY_SK"


def test_secret_env_not_set(tmp_path: Path) -> None:
    msg = error_of(tmp_path, '[target]\nsecret_key_env = "NOPE_SK"\naccess_key = "a"\n')
    assert msg == "target.secret_key_env names $NOPE_SK, which is not set in the environment"


def test_secret_env_bad_name(tmp_path: Path) -> None:
    assert "must name an environment variable" in error_of(tmp_path, '[target]\nsecret_key_env = "1 x"\n')


def test_secret_and_env_both(tmp_path: Path) -> None:
    msg = error_of(tmp_path, '[backup]\nsecret_key = "x"\nsecret_key_env = "X"\n', env={"X": "y"})
    assert msg == "set backup.secret_key or backup.secret_key_env, not both"


def test_env_suffix_only_for_secrets(tmp_path: Path) -> None:
    assert "unknown key target.url_env" in error_of(tmp_path, '[target]\nurl_env = "X"\n')


def test_secrets_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_text(
        tmp_path,
        '[source]\nendpoint = "http://h:1"\naccess_key = "AK-PLAIN"\nsecret_key_env = "SK"\n'
        '[backup]\nurl = "s3://bk/"\n',
        env={"SK": "TOP-SECRET-1"},
    )
    shown = [repr(cfg), str(cfg), cfg.to_toml(), str(cfg.to_dict()), repr(cfg.target), repr(cfg.backup)]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("config %s %r", cfg, cfg.source)
    shown.append(caplog.text)
    for text in shown:
        assert "TOP-SECRET-1" not in text
        assert "AK-PLAIN" not in text
    assert "**** (from $SK)" in cfg.to_toml()
    assert cfg.to_dict(masked=False)["source"]["secret_key"] == "TOP-SECRET-1"


def test_secret_object() -> None:
    s = Secret("v")
    assert str(s) == "****" and repr(s) == "Secret('****')" and f"{s}" == "****"
    assert s == Secret("v") and s != Secret("w") and hash(s) == hash(Secret("v"))


# --------------------------------------------------------------------------- output and helpers


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[source]\nbuckets = ["a"]\nprefixes = { a = ["x/"] }\n[target]\nurl = "s3://b/p/"\n')
    text = cfg.to_toml()
    import tomllib

    again = parse_config(tomllib.loads(text.replace("#", "# ")), env={})
    assert again.source.prefixes == cfg.source.prefixes
    assert again.target.url == "s3://b/p/"
    assert again.collector == cfg.collector and again.index == cfg.index


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"index": {"path": "db/x.db"}, "target": {"url": "file://logs"}}, env={})
    assert cfg.index.path == str(tmp_path / "db/x.db")
    assert cfg.target.url == f"file://{tmp_path}/logs/"
    cfg = parse_config({"target": {"url": "file:///abs/dir"}}, env={})
    assert cfg.target.url == "file:///abs/dir/"


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 << 20), ("8 MB", 8 << 20), ("1048576", 1 << 20), ("1.5KiB", 1536), ("2g", 2 << 30), ("nope", None)],
)
def test_parse_size(text: str, size: int | None) -> None:
    assert cfgmod.parse_size(text) == size


def test_open_store_errors(tmp_path: Path) -> None:
    cfg = parse_config({"index": {"path": str(tmp_path / "missing-dir" / "x.db")}}, env={})
    with pytest.raises(ConfigError, match="index.path: directory .*missing-dir does not exist"):
        cfgmod.open_store(cfg)
    cfg = parse_config({"index": {"backend": "rados", "ceph_conf": str(tmp_path / "none.conf")}}, env={})
    with pytest.raises(ConfigError, match="index.ceph_conf: .*none.conf not found"):
        cfgmod.open_store(cfg)


def test_open_index_and_target_embedded(tmp_path: Path) -> None:
    cfg = parse_config(
        {"index": {"path": str(tmp_path / "i.db"), "shards": 4}, "target": {"url": f"file://{tmp_path}/logs/"}}, env={}
    )
    index = cfgmod.open_index(cfg)
    try:
        assert index.shards == 4
    finally:
        index.store.close()
    target = cfgmod.open_target(cfg)
    assert (tmp_path / "logs").is_dir()
    assert list(target.list()) == []


def test_open_index_with_other_shard_count(tmp_path: Path) -> None:
    db = str(tmp_path / "i.db")
    cfgmod.open_index(parse_config({"index": {"path": db, "shards": 4}}, env={})).store.close()
    with pytest.raises(ConfigError, match="created with shards=4"):
        cfgmod.open_index(parse_config({"index": {"path": db, "shards": 8}}, env={}))


def test_backup_target_requires_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backup.url is not set"):
        cfgmod.open_backup_target(parse_config({}, env={}))


# --------------------------------------------------------------------------- advanced tuning keys


def test_tuning_defaults_are_the_former_constants() -> None:
    cfg = parse_config({}, env={})
    c = cfg.collector
    assert (c.retries, c.backoff_base, c.backoff_max, c.standby_retry) == (5, 0.5, 30.0, None)
    assert (c.gc_age, c.gc_interval, c.page, c.trim_batch, c.pause_poll) == (3600.0, 600.0, 1000, 1000, 0.25)
    s = cfg.source
    assert (s.hot_seconds, s.page_entries, s.trim_datalog, s.trim_interval) == (60.0, 1000, True, 10.0)
    assert (s.bucket_scan_interval, s.full_sync_pages, s.datalog_full_interval) == (300.0, 8, 60.0)
    assert (s.shards_per_round, s.workers, s.backoff_base, s.backoff_max) == (16, 8, 0.5, 30.0)
    assert "# standby_retry = (unset)" in cfg.to_toml()


def test_tuning_keys_load(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
[collector]
retries = 0
backoff_base = 0.1
backoff_max = 5
standby_retry = 1
gc_age = 0
gc_interval = 60
page = 100
trim_batch = 50
pause_poll = 1

[source]
hot_seconds = 10
page_entries = 200
trim_datalog = false
trim_interval = 0
bucket_scan_interval = 30
full_sync_pages = 2
datalog_full_interval = 5
shards_per_round = 4
workers = 64
backoff_base = 1
backoff_max = 60
""",
    )
    c, s = cfg.collector, cfg.source
    assert c.retries == 0 and c.backoff_max == 5.0 and isinstance(c.backoff_max, float)
    assert c.standby_retry == 1.0 and c.page == 100 and c.trim_batch == 50 and c.pause_poll == 1.0
    assert s.trim_datalog is False and s.trim_logs is True and s.workers == 64 and s.page_entries == 200
    assert s.hot_seconds == 10.0 and s.backoff_max == 60.0
    import tomllib

    again = parse_config(tomllib.loads(cfg.to_toml()), env={})
    assert again.collector == c and again.source == s


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[collector]\nretries = -1\n", "collector.retries must be at least 0 (got -1)"),
        ("[collector]\nretries = 1.5\n", "collector.retries must be an integer (got 1.5)"),
        ("[collector]\nbackoff_base = 0\n", "collector.backoff_base must be greater than 0 (got 0)"),
        ("[collector]\nbackoff_max = -1\n", "collector.backoff_max must be greater than 0 (got -1)"),
        ("[collector]\nstandby_retry = 0\n", "collector.standby_retry must be greater than 0 (got 0)"),
        ('[collector]\nstandby_retry = "2s"\n', 'collector.standby_retry must be a number (got "2s")'),
        ("[collector]\ngc_age = -1\n", "collector.gc_age must be at least 0 (got -1)"),
        ("[collector]\ngc_interval = -0.5\n", "collector.gc_interval must be at least 0 (got -0.5)"),
        ("[collector]\npage = 0\n", "collector.page must be at least 1 (got 0)"),
        ("[collector]\npage = 1001\n", "collector.page must be at most 1000 (got 1001)"),
        ("[collector]\ntrim_batch = 5000\n", "collector.trim_batch must be at most 1000 (got 5000)"),
        ("[collector]\npause_poll = 0\n", "collector.pause_poll must be greater than 0 (got 0)"),
        ("[collector]\nretrys = 1\n", "unknown key collector.retrys (did you mean 'retries'?)"),
        ("[source]\nhot_seconds = 0\n", "source.hot_seconds must be greater than 0 (got 0)"),
        ("[source]\npage_entries = 1001\n", "source.page_entries must be at most 1000 (got 1001)"),
        ("[source]\npage_entries = 0\n", "source.page_entries must be at least 1 (got 0)"),
        ('[source]\ntrim_datalog = "yes"\n', 'source.trim_datalog must be true or false (got "yes")'),
        ("[source]\ntrim_interval = -1\n", "source.trim_interval must be at least 0 (got -1)"),
        ("[source]\nbucket_scan_interval = -1\n", "source.bucket_scan_interval must be at least 0 (got -1)"),
        ("[source]\nfull_sync_pages = 0\n", "source.full_sync_pages must be at least 1 (got 0)"),
        ("[source]\ndatalog_full_interval = -1\n", "source.datalog_full_interval must be at least 0 (got -1)"),
        ("[source]\nshards_per_round = 0\n", "source.shards_per_round must be at least 1 (got 0)"),
        ("[source]\nworkers = 0\n", "source.workers must be at least 1 (got 0)"),
        ("[source]\nworkers = 65\n", "source.workers must be at most 64 (got 65)"),
        ("[source]\nworkers = 8.0\n", "source.workers must be an integer (got 8.0)"),
        ("[source]\nbackoff_base = 0\n", "source.backoff_base must be greater than 0 (got 0)"),
        ("[source]\nbackoff_max = 0\n", "source.backoff_max must be greater than 0 (got 0)"),
        ("[source]\nworker = 2\n", "unknown key source.worker (did you mean 'workers'?)"),
    ],
)
def test_bad_tuning_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


def test_large_sizes_are_shown_in_bytes(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "[collector]\npart_bytes = 6000000000\n")
    assert msg == "collector.part_bytes must be at most 5368709120 bytes (got 6000000000)"


# --------------------------------------------------------------------------- sections built in code


def test_sections_built_in_code_are_checked() -> None:
    c = cfgmod.CollectorConfig(page=3, settle=0)
    assert c.page == 3 and c.settle == 0.0 and isinstance(c.settle, float) and c.lease_ttl == 30.0
    src = cfgmod.SourceConfig(
        endpoint="http://h:1/",
        access_key=Secret("a"),
        secret_key=Secret("s"),
        buckets=["b"],  # type: ignore[arg-type]  # a list, as TOML gives it
        prefixes={"b": "p/"},  # type: ignore[dict-item]  # a bare string: a list of one
    )
    assert src.buckets == ("b",) and src.endpoint == "http://h:1" and src.prefixes == {"b": ("p/",)}
    with pytest.raises(TypeError):
        src.prefixes["c"] = ("x",)  # type: ignore[index]
    with pytest.raises(ValidationError):
        cfgmod.CollectorConfig(lease_ttl=0.5)
    with pytest.raises(ValidationError):
        cfgmod.SourceConfig(access_key=Secret("a"))
    with pytest.raises(ValidationError):
        c.page = 4  # frozen
    assert cfgmod.CollectorConfig(page=3, settle=0) == c


def test_unchecked_skips_bounds_and_fills_defaults() -> None:
    c = cfgmod.CollectorConfig.unchecked(lease_ttl=0.5, interval=0, settle=0)
    assert c.lease_ttl == 0.5 and c.interval == 0.0 and isinstance(c.interval, float)
    assert c.page == 1000 and c.roll_entries == 100_000
    s = cfgmod.SourceConfig.unchecked(buckets=["b"], prefixes={"b": ["x/"]}, lease_ttl=0.2)
    assert s.buckets == ("b",) and s.prefixes == {"b": ("x/",)} and s.includes("b", "x/1")
    with pytest.raises(TypeError, match="no key 'lease'"):
        cfgmod.CollectorConfig.unchecked(lease=1)
    cfg = Config.unchecked(collector=c)
    assert cfg.collector.lease_ttl == 0.5 and cfg.index.backend == "sqlite"
    cfg = Config.unchecked(collector={"lease_ttl": 0.5, "page": 3})
    assert isinstance(cfg.collector, cfgmod.CollectorConfig) and cfg.collector.page == 3


def test_secret_validation_errors_do_not_show_input() -> None:
    with pytest.raises(ValidationError) as info:
        cfgmod.SourceConfig(access_key="AK-PLAIN-VALUE", endpoint="nope")  # type: ignore[arg-type]
    assert "AK-PLAIN-VALUE" not in str(info.value)


def test_backup_schedule_keys(tmp_path: Path) -> None:
    cfg = parse_config({}, env={})
    assert cfg.backup.interval is None and cfg.backup.lease_ttl == 30.0
    cfg = load_text(tmp_path, '[backup]\nurl = "file:///b/"\ninterval = 3600\nlease_ttl = 10\n')
    assert cfg.backup.interval == 3600.0 and cfg.backup.lease_ttl == 10.0
    assert error_of(tmp_path, "[backup]\ninterval = 0\n") == "backup.interval must be greater than 0 (got 0)"
    assert error_of(tmp_path, "[backup]\nlease_ttl = 0.5\n") == "backup.lease_ttl must be at least 1 (got 0.5)"
