"""The dev cluster's S3 server: its command line, identity, Secret and how weed is built."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from controller.devcluster import binaries, s3

PORTS = {name: 20000 + i for i, name in enumerate(s3.PORT_NAMES)}


def _flags(cmd: list[str]) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in cmd[1:] if "=" in arg)


def test_weed_listens_on_loopback_and_the_chosen_ports_only() -> None:
    cmd = s3.weed_command("/bin/weed", Path("/c/s3"), PORTS, "10.244.0.1")
    flags = _flags(cmd)
    assert cmd[0] == "/bin/weed" and "server" in cmd and "-filer" in cmd and "-s3" in cmd
    assert flags["ip"] == flags["ip.bind"] == "127.0.0.1"
    assert flags["s3.ip.bind"] == "10.244.0.1"  # only the gateway: where pods reach it
    for name, port in PORTS.items():
        assert flags[f"{name}.port" if "." not in name else name.replace(".", ".port.")] \
            == str(port)
    # No default port (8181, 9101, port + 10000 for gRPC) is left to chance.
    assert flags["s3.port.iceberg"] == flags["s3.port.lance"] == "0"
    assert "0.0.0.0" not in " ".join(cmd)


def test_weed_keeps_everything_under_its_dir_and_stops_at_once() -> None:
    cmd = s3.weed_command("/bin/weed", Path("/c/s3"), PORTS, "127.0.0.1")
    flags = _flags(cmd)
    assert cmd.index("-logtostderr") < cmd.index("server")  # a global flag: no /tmp logs
    for key in ("dir", "config_dir", "filer.localSocket", "s3.localSocket", "s3.config"):
        assert flags[key].startswith("/c/s3/"), key
    assert "/tmp" not in " ".join(cmd)
    assert flags["volume.preStopSeconds"] == "0"  # else SIGTERM waits 10 s
    assert flags["master.telemetry"] == "false"
    assert int(flags["master.volumeSizeLimitMB"]) <= 64


def test_master_config_allocates_at_once_and_few_volumes() -> None:
    import tomllib

    growth = tomllib.loads(s3.master_toml())["master"]["volume_growth"]
    assert growth["allocation_deferral"] == "0s"  # else the first write waits ~10 s
    assert growth["copy_1"] <= 2  # 16 volumes hold more than two buckets


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_weed_never_listens_everywhere(host: str) -> None:
    with pytest.raises(s3.S3Error):
        s3.weed_command("/bin/weed", Path("/c"), PORTS, host)


def test_weed_needs_every_port() -> None:
    with pytest.raises(s3.S3Error, match=r"s3\.grpc"):
        s3.weed_command("/bin/weed", Path("/c"), {k: v for k, v in PORTS.items()
                                                  if k != "s3.grpc"}, "127.0.0.1")


def test_identity_config_has_one_all_powerful_identity() -> None:
    creds = s3.Credentials("AK", "SK")
    ident = s3.identity_config(creds)["identities"]
    assert len(ident) == 1
    assert ident[0]["credentials"] == [{"accessKey": "AK", "secretKey": "SK"}]
    assert {"Admin", "Read", "Write", "List"} <= set(ident[0]["actions"])


def test_generated_credentials_differ_each_time() -> None:
    a, b = s3.Credentials.generate(), s3.Credentials.generate()
    assert a != b and a.access_key.isalnum() and len(a.secret_key) >= 30


def test_secret_carries_what_boto3_and_metaflow_read() -> None:
    st = s3.S3State(pid=1, ports=PORTS, host="10.244.0.1", access_key="AK", started_at=0)
    secret = s3.secret_manifest(st, s3.Credentials("AK", "SK"))
    assert secret["metadata"] == {**secret["metadata"], "name": "trellis-s3",
                                  "namespace": "trellis-system"}
    data = secret["stringData"]
    endpoint = f"http://10.244.0.1:{PORTS['s3']}"
    assert data["AWS_ACCESS_KEY_ID"] == "AK" and data["AWS_SECRET_ACCESS_KEY"] == "SK"
    assert data["AWS_ENDPOINT_URL"] == data["METAFLOW_S3_ENDPOINT_URL"] == endpoint
    assert data["METAFLOW_DATASTORE_SYSROOT_S3"] == "s3://trellis/metaflow"
    # The operator's own settings, read through envFrom like the ConfigMap.
    from controller.settings import Settings

    settings = Settings.from_env({k: v for k, v in data.items() if k.startswith("TRELLIS_")})
    assert settings.s3_endpoint_url == endpoint
    assert settings.datastore_s3_root == data["METAFLOW_DATASTORE_SYSROOT_S3"]
    assert data["RCLONE_CONFIG_S3_ENDPOINT"] == endpoint  # Seldon's storage initializer


def test_the_operator_namespace_is_the_manifests() -> None:
    from controller.paths import ROOT

    text = (ROOT / "manifests" / "namespace.yaml").read_text()
    assert f"name: {s3.NAMESPACE}" in text


def test_identity_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_text("old")
    s3._write_private(path, json.dumps({"a": 1}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"a": 1}


def test_stop_without_a_server_removes_its_files(tmp_path: Path) -> None:
    server = s3.S3Server(tmp_path)
    (server.root / "data").mkdir(parents=True)
    (server.root / "identity.json").write_text("{}")
    (server.root / "weed.log").write_text("kept")
    assert server.stop() is False
    assert sorted(p.name for p in server.root.iterdir()) == ["weed.log"]


SEAWEEDFS_GOMOD = """module github.com/seaweedfs/seaweedfs

go 1.26.6

require (
\tgithub.com/tyler-smith/go-bip39 v1.1.0 // indirect
)

// replace github.com/seaweedfs/raft => /Users/someone/go/src/github.com/seaweedfs/raft

replace github.com/tyler-smith/go-bip39 => github.com/cosmos/go-bip39 v1.0.0
replace (
\texample.com/a v1.0.0 => example.com/b v1.2.0 // a block
\texample.com/local => ../local
)
"""


def test_weed_wrapper_module_repeats_seaweedfs_replaces() -> None:
    gomod = binaries.weed_gomod(SEAWEEDFS_GOMOD)
    lines = gomod.splitlines()
    assert "go 1.26.6" in lines
    assert f"require github.com/seaweedfs/seaweedfs {binaries.SEAWEEDFS_VERSION}" in lines
    assert "replace github.com/tyler-smith/go-bip39 => github.com/cosmos/go-bip39 v1.0.0" \
        in lines
    assert "replace example.com/a v1.0.0 => example.com/b v1.2.0" in lines
    assert "raft" not in gomod and "../local" not in gomod  # comments, local paths


def test_weed_has_its_own_versioned_cache(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TEST_ASSET_WEED", raising=False)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    assert binaries.SEAWEEDFS_VERSION in binaries.weed_cache_dir().name
    assert binaries.locate("weed") is None
    weed = binaries.weed_cache_dir() / "bin" / "weed"
    weed.parent.mkdir(parents=True)
    weed.write_text("")
    assert binaries.locate("weed") == weed
    assert binaries.ensure_weed() == weed  # found: nothing to build
