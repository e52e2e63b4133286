"""The QEMU wrapper hands rbd nodes the host's current Ceph key from the file the
hook wrote (libvirt's secret may hold a key the control plane has replaced since)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from vvhost.host import qemuwrap


def node(image: str, user: str = "vvhost-kvm1") -> dict[str, object]:
    return {
        "driver": "rbd",
        "pool": "P",
        "image": image,
        "user": user,
        "key-secret": "libvirt-1-storage-auth-secret0",
        "node-name": image,
    }


def test_rbd_nodes_read_the_key_file_once_per_user(tmp_path: Path) -> None:
    key = tmp_path / "vvhost-kvm1.key"
    key.write_text("QUFBQQ==")
    plain = json.dumps({"driver": "file", "filename": "/f"})
    argv = ["-name", "x", "-blockdev", json.dumps(node("ns/a")), "-blockdev",
            json.dumps(node("ns/b")), "-blockdev", plain]  # fmt: skip
    out = qemuwrap.rewrite(argv, str(tmp_path))
    assert out[:2] == ["-name", "x"] and out[-2:] == argv[-2:]
    assert out.count("-object") == 1  # one secret object for both nodes
    i = out.index("-object")
    assert json.loads(out[i + 1]) == {
        "qom-type": "secret",
        "id": "vvkey-vvhost-kvm1",
        "file": str(key),
        "format": "base64",
    }
    nodes = [json.loads(out[j + 1]) for j, a in enumerate(out) if a == "-blockdev"][:2]
    assert i < out.index("-blockdev")  # defined before the first node uses it
    for n, image in zip(nodes, ("a", "b"), strict=True):
        assert n["key-secret"] == "vvkey-vvhost-kvm1"
        assert (n["namespace"], n["image"]) == ("ns", image)


def test_without_a_key_file_libvirts_secret_stays(tmp_path: Path) -> None:
    argv = ["-blockdev", json.dumps(node("ns/a", user="other"))]
    for where in (str(tmp_path), None):
        out = qemuwrap.rewrite(argv, where)
        assert "-object" not in out
        assert json.loads(out[1])["key-secret"] == "libvirt-1-storage-auth-secret0"
    (tmp_path / "..key").write_text("x")
    assert "-object" not in qemuwrap.rewrite(
        ["-blockdev", json.dumps(node("a", "."))], str(tmp_path)
    )


def test_installed_copy_knows_the_hosts_ceph_dir(tmp_path: Path) -> None:
    path = qemuwrap.install(str(tmp_path), "/srv/host one/ceph")
    text = Path(path).read_text()
    assert "CEPH_DIR: str | None = '/srv/host one/ceph'" in text
    probe = f"import runpy; m = runpy.run_path({path!r}); print(m['CEPH_DIR'])"
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", probe], capture_output=True, text=True,
                         env={**os.environ}, check=True)  # fmt: skip
    assert out.stdout.strip() == "/srv/host one/ceph"
