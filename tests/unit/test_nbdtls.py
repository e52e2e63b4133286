"""NBD over TLS without daemons: the CA's identities, the host's credential files,
the qemu-img arguments and the libvirt disk source a TLS handle gives."""

from __future__ import annotations

import os
import stat
import subprocess
import xml.etree.ElementTree as ET

import pytest

from vvhost.catalog import bindrepo, nbdtlsrepo
from vvhost.catalog.db import Database, sqlite_url
from vvhost.catalog.nbdtlsrepo import CatalogTlsStore
from vvhost.certs import NbdCa
from vvhost.host import domainxml as dx
from vvhost.host import handles as hd
from vvhost.host import nbdtls
from vvhost.host.vms import raw_source, raw_target
from vvhost.model import Host
from vvhost.pe.nbdtls import host_of_key

HANDLE = {
    "protocol": "nbd",
    "uri": "nbd://127.0.0.1:41234/vv-1111.kvm1",
    "export": "vv-1111.kvm1",
    "socket": None,
    "tls": {"type": "x509", "identity": "O=vvhost,OU=00,CN=kvm1"},
}


def subject(pem: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "compat"],
        input=pem,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def catalog(tmp_path: str, name: str = "c.db") -> CatalogTlsStore:
    return CatalogTlsStore(Database(sqlite_url(os.path.join(str(tmp_path), name))))


def test_identity_is_the_certificates_subject_and_changes_on_each_issue(tmp_path: str) -> None:
    ca = NbdCa(str(tmp_path), catalog(tmp_path))
    first = ca.identity("kvm1")
    assert first == ca.identity("kvm1")  # issued once, then kept
    creds = ca.credentials("kvm1")
    assert subject(creds.client_cert) == "subject=/" + first.replace(",", "/")
    assert creds.ca_cert.startswith("-----BEGIN CERTIFICATE-----")
    second = ca.issue("kvm1")
    assert second != first and second.endswith(",CN=kvm1")
    ca.forget("kvm1")
    assert ca.identity("kvm1") not in (first, second)  # the same name again: a new identity
    assert stat.S_IMODE(os.stat(ca.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca.ca_key).st_mode) == 0o600


def test_server_dir_has_the_ca_and_a_certificate_for_the_address(tmp_path: str) -> None:
    ca = NbdCa(str(tmp_path), catalog(tmp_path))
    d = ca.server_dir(os.path.join(str(tmp_path), "tls"), "10.1.2.3")
    assert sorted(os.listdir(d)) == ["ca-cert.pem", "server-cert.pem", "server-key.pem"]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", f"{d}/server-cert.pem"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:10.1.2.3" in text


def test_two_nodes_share_the_ca_and_see_each_others_rotation(tmp_path: str) -> None:
    """Two control planes (state directories) on one catalog sign with one CA and
    hand out one identity; a rotation through either is the other's current one."""
    store = catalog(tmp_path)
    a = NbdCa(os.path.join(str(tmp_path), "a"), store)
    b = NbdCa(os.path.join(str(tmp_path), "b"), store)
    first = a.identity("kvm1")
    assert b.identity("kvm1") == first
    assert a.credentials("kvm1") == b.credentials("kvm1")
    rotated = b.issue("kvm1")
    assert rotated != first and a.current("kvm1") == rotated
    assert subject(a.credentials("kvm1").client_cert) == "subject=/" + rotated.replace(",", "/")
    with open(a.ca_cert) as fa, open(b.ca_cert) as fb:
        assert fa.read() == fb.read()
    a.forget("kvm1")
    assert b.current("kvm1") is None


def test_a_nodes_ca_from_before_the_catalog_is_kept_and_a_later_one_gives_way(
    tmp_path: str,
) -> None:
    """Upgrade: the first node's own CA files and host credentials become the
    catalog's (hosts keep working); another node's own CA is replaced, and its
    endpoint's server certificate is made again under the kept CA."""
    old = NbdCa(os.path.join(str(tmp_path), "old"), catalog(tmp_path, "old.db"))
    creds = old.credentials("kvm1")
    node1, node2 = (os.path.join(str(tmp_path), n, "nbd-tls") for n in ("n1", "n2"))
    host_dir = os.path.join(node1, "hosts", "kvm1")
    os.makedirs(host_dir)
    with open(old.ca_key) as fh:
        ca_key = fh.read()
    for path, text in (
        (os.path.join(host_dir, "identity"), creds.identity + "\n"),
        (os.path.join(host_dir, "client-cert.pem"), creds.client_cert),
        (os.path.join(host_dir, "client-key.pem"), creds.client_key),
        (os.path.join(node1, "ca-cert.pem"), creds.ca_cert),
        (os.path.join(node1, "ca-key.pem"), ca_key),
    ):
        with open(path, "w") as fh:
            fh.write(text)
    other = NbdCa(os.path.join(str(tmp_path), "other"), catalog(tmp_path, "other.db"))
    stale_tls = other.server_dir(os.path.join(str(tmp_path), "n2-tls"), "127.0.0.1")
    os.makedirs(node2)
    for name in ("ca-cert.pem", "ca-key.pem"):
        with (
            open(os.path.join(other.root, name)) as src,
            open(os.path.join(node2, name), "w") as dst,
        ):
            dst.write(src.read())

    store = catalog(tmp_path)
    n1 = NbdCa(os.path.dirname(node1), store)
    assert n1.credentials("kvm1") == creds  # taken over as they were
    assert not os.path.exists(os.path.join(node1, "hosts"))
    n2 = NbdCa(os.path.dirname(node2), store)
    assert n2.credentials("kvm1") == creds
    with open(n2.ca_cert) as fh:
        assert fh.read() == creds.ca_cert
    remade = n2.server_dir(stale_tls, "127.0.0.1")
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", n2.ca_cert, f"{remade}/server-cert.pem"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_catalog_keeps_first_ports_and_lists_identities_of_unfenced_hosts(tmp_path: str) -> None:
    store = catalog(tmp_path)
    assert store.claim_port("pe1", "kvm1", 41000) == 41000
    assert store.claim_port("pe1", "kvm1", 42000) == 41000  # another node was later
    assert store.port("pe1", "kvm2") is None
    for name in ("kvm1", "kvm2"):
        with store.db.tx() as conn:
            bindrepo.insert_host(conn, Host(name=name, iqn=None, created=0.0))
        store.save(name, (f"O=vvhost,OU=1,CN={name}", "C", "K"), replace=False)
    assert store.save("kvm1", ("O=vvhost,OU=2,CN=kvm1", "C", "K"), replace=False)[0].endswith(
        "OU=1,CN=kvm1"
    )  # a first issue racing another keeps the one that stands
    with store.db.tx() as conn:
        bindrepo.set_fenced(conn, "kvm2", 1.0)
        assert nbdtlsrepo.identities(conn) == {"kvm1": "O=vvhost,OU=1,CN=kvm1"}
        nbdtlsrepo.forget_host(conn, "kvm1")
        assert nbdtlsrepo.identities(conn) == {}
    assert store.port("pe1", "kvm1") is None


def test_host_writes_credentials_privately_and_fetches_only_when_stale(tmp_path: str) -> None:
    d = os.path.join(str(tmp_path), "nbd")
    creds = {"identity": "I1", "ca_cert": "CA\n", "client_cert": "C\n", "client_key": "K\n"}

    class Fake:
        calls = 0

        def host_nbd_credentials(self, host: str) -> dict[str, str]:
            Fake.calls += 1
            return {**creds, "host": host}

    nbdtls.ensure(Fake(), "kvm1", [{"protocol": "nbd", "tls": None}], d)  # type: ignore[arg-type]
    assert Fake.calls == 0 and not os.path.exists(d)
    handle = {"protocol": "nbd", "tls": {"identity": "I1"}}
    nbdtls.ensure(Fake(), "kvm1", [handle], d)  # type: ignore[arg-type]
    nbdtls.ensure(Fake(), "kvm1", [handle], d)  # type: ignore[arg-type]
    assert Fake.calls == 1 and nbdtls.current_identity(d) == "I1"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(f"{d}/client-key.pem").st_mode) == 0o600
    creds["identity"] = "I2"
    nbdtls.ensure(Fake(), "kvm1", [{"protocol": "nbd", "tls": {"identity": "I2"}}], d)  # type: ignore[arg-type]
    assert handle["tls"] == {"identity": "I1", "dir": d}  # image_args finds the credentials
    assert Fake.calls == 2 and nbdtls.current_identity(d) == "I2"


def test_qemu_img_arguments_name_the_client_credentials() -> None:
    handle = {**HANDLE, "tls": {**HANDLE["tls"], "dir": "/etc/pki/a,b"}}
    assert raw_target(handle) == [
        "--object",
        "tls-creds-x509,id=vvtls0,dir=/etc/pki/a,,b,endpoint=client",
        "--target-image-opts",
        "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,"
        "file.server.port=41234,file.export=vv-1111.kvm1,file.tls-creds=vvtls0",
    ]
    assert raw_source(handle)[2] == "--image-opts"
    plain = {**HANDLE, "tls": None}
    assert raw_source(plain) == ["-f", "raw", HANDLE["uri"]]


def test_disk_source_says_tls_yes() -> None:
    root = ET.fromstring(
        "<domain><devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    dx.set_source(root, "vda", HANDLE)
    src = root.find("devices/disk/source")
    assert src is not None and src.get("tls") == "yes" and src.get("name") == HANDLE["export"]
    assert dx.same_source(dx.disk_source(root, "vda"), HANDLE)


@pytest.mark.parametrize(
    ("key", "host"), [("vv-1111.kvm1", "kvm1"), ("vv-1111.a.b.example", "a.b.example"), ("x", None)]
)
def test_host_of_export_name(key: str, host: str | None) -> None:
    assert host_of_key(key) == host


def test_offline_redo_nodes_name_the_client_credentials() -> None:
    """qemu-img commit/convert of redo layers over TLS: each nbd node names the
    credentials object, which is defined once."""
    handle = {**HANDLE, "tls": {**HANDLE["tls"], "dir": "/etc/pki/h"}}
    from vvhost.host import domainxml as dx

    assert dx.blockdev(handle)["tls-creds"] == "vvtls0"
    assert "tls-creds" not in dx.blockdev({**HANDLE, "tls": None})
    assert hd.objects([{**HANDLE, "tls": None}, handle, handle]) == [
        "--object",
        "tls-creds-x509,id=vvtls0,dir=/etc/pki/h,endpoint=client",
    ]
    assert hd.objects([{**HANDLE, "tls": None}]) == []
