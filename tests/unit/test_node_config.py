"""The node's rendered configuration keeps the facts measured on this machine type."""

from __future__ import annotations

from pathlib import Path

from controller.devcluster import binaries, hostnet, node
from controller.settings import Settings


def test_containerd_config_restricts_oom_score_adj_and_uses_private_paths() -> None:
    text = node.containerd_config(root=Path("/r"), state=Path("/s"), socket=Path("/s/c.sock"),
                                  cni_conf_dir=Path("/c"))
    # Without it runc fails every sandbox here (no CAP_SYS_RESOURCE).
    assert "restrict_oom_score_adj = true" in text
    assert 'root = "/r"' in text and 'state = "/s"' in text
    assert 'address = "/s/c.sock"' in text
    assert f'sandbox_image = "{node.PAUSE_IMAGE}"' in text
    assert "SystemdCgroup = false" in text
    assert 'Root = "/s/runc"' in text  # runc's state, not /run/containerd/runc


def test_kubelet_config_never_collects_images_and_accepts_cgroup_v1() -> None:
    cfg = node.kubelet_config(port=1, healthz_port=2, socket=Path("/s.sock"), ca=Path("/ca"),
                              pod_logs=Path("/logs"), volume_plugins=Path("/vp"))
    assert cfg["volumePluginDir"] == "/vp"  # not /usr/libexec/kubernetes on the host
    assert cfg["imageGCHighThresholdPercent"] == 100
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["address"] == hostnet.GATEWAY
    assert cfg["authentication"]["anonymous"]["enabled"] is False


def test_cni_config_puts_the_gateway_on_the_node_bridge() -> None:
    cfg = node.cni_config(Path("/cni"))
    bridge = cfg["plugins"][0]
    assert bridge["bridge"] == hostnet.BRIDGE and cfg["name"] == hostnet.CNI_NETWORK
    assert bridge["ipam"]["ranges"][0][0] == {"subnet": hostnet.POD_CIDR,
                                               "gateway": hostnet.GATEWAY}


def test_version_ldflags_name_the_release() -> None:
    flags = binaries.version_ldflags("1.34.4")
    assert "gitVersion=v1.34.4" in flags and "gitMinor=34" in flags


def test_local_training_switch_reads_booleans() -> None:
    assert Settings.from_env({}).allow_local_training is True
    assert Settings.from_env({"TRELLIS_ALLOW_LOCAL_TRAINING": "false"}).allow_local_training \
        is False
    assert Settings.from_env({"TRELLIS_ALLOW_LOCAL_TRAINING": "1"}).allow_local_training is True


def test_new_host_entries_go_and_old_ones_stay(tmp_path: Path) -> None:
    """What kubelet and containerd write outside the node's directories (device-plugin
    socket, log links, shim sockets) is removed at `down`; what was there stays."""
    top = tmp_path / "var-lib-kubelet"
    (top / "old").mkdir(parents=True)
    (top / "old" / "keep").write_text("x")
    before = hostnet.host_entries([str(top)])
    (top / "device-plugins").mkdir()
    (top / "device-plugins" / "kubelet.sock").write_text("")
    (top / "old" / "link").symlink_to(tmp_path / "gone")
    removed = hostnet.remove_new_entries(before, [str(top)])
    assert sorted(removed) == sorted(str(p) for p in (
        top / "device-plugins", top / "device-plugins" / "kubelet.sock", top / "old" / "link"))
    assert hostnet.host_entries([str(top)]) == before
