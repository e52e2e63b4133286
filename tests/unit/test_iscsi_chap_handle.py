"""The host side of an iSCSI binding whose target asks for CHAP: libvirt's
<auth>, the libvirt secret, QEMU's user/password-secret and the secret file."""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET

import pytest

from vvhost.errors import InvalidInput
from vvhost.host import handles as hd
from vvhost.host import iscsisecret
from vvhost.host.handles import HostAccess

CHAP = {
    "protocol": "iscsi",
    "uri": "iscsi://127.0.0.1:3260/iqn.x:pe.h1/3",
    "portal": "127.0.0.1:3260",
    "target": "iqn.x:pe.h1",
    "lun": 3,
    "initiator": "iqn.2026-11.test:h1",
    "chap_user": "h1.0a1b2c3d",
    "chap_secret": "00112233445566778899aabb",
}


def test_libvirt_disk_names_the_secret_and_never_holds_it() -> None:
    h = hd.of(dict(CHAP))
    src = h.source_element()
    auth = src.find("auth")
    assert auth is not None and auth.get("username") == "h1.0a1b2c3d"
    secret = auth.find("secret")
    assert secret is not None and secret.attrib == {
        "type": "iscsi",
        "uuid": iscsisecret.secret_uuid("h1.0a1b2c3d"),
    }
    assert CHAP["chap_secret"] not in ET.tostring(src, encoding="unicode")
    [libvirt_secret] = hd.secrets([CHAP])
    assert libvirt_secret.value() == CHAP["chap_secret"].encode()
    assert CHAP["chap_secret"] not in libvirt_secret.xml()
    usage = ET.fromstring(libvirt_secret.xml()).find("usage")
    assert usage is not None and usage.get("type") == "iscsi"
    # another rotation, another user, another libvirt secret
    assert iscsisecret.secret_uuid("h1.ffffffff") != libvirt_secret.uuid


def test_qemu_reads_the_secret_from_a_private_file(tmp_path: str) -> None:
    raw = dict(CHAP)
    h = hd.of(raw)
    with pytest.raises(InvalidInput, match="not on this host"):
        h.objects()  # not prepared: no file to name
    ceph_dir = os.path.join(tmp_path, "ceph")
    hd.prepare([raw], HostAccess(None, "h1", os.path.join(tmp_path, "nbd"), ceph_dir))
    path = raw["chap_file"]
    assert os.path.dirname(path) == os.path.join(tmp_path, "iscsi")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    with open(path, encoding="ascii") as fh:
        assert fh.read() == CHAP["chap_secret"]
    oid = iscsisecret.object_id("h1.0a1b2c3d")
    assert h.blockdev() == {
        "driver": "iscsi",
        "transport": "tcp",
        "portal": "127.0.0.1:3260",
        "target": "iqn.x:pe.h1",
        "lun": 3,
        "initiator-name": "iqn.2026-11.test:h1",
        "user": "h1.0a1b2c3d",
        "password-secret": oid,
    }
    args = h.image_args()
    assert args == [
        "--object",
        f"secret,id={oid},file={path}",
        "--image-opts",
        "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:3260,"
        "file.target=iqn.x:pe.h1,file.lun=3,file.initiator-name=iqn.2026-11.test:h1,"
        f"file.user=h1.0a1b2c3d,file.password-secret={oid}",
    ]
    assert CHAP["chap_secret"] not in " ".join(args)


def test_a_bad_user_name_or_a_missing_secret_is_refused() -> None:
    with pytest.raises(InvalidInput, match="CHAP user"):
        hd.of({**CHAP, "chap_user": "../x"}).source_element()
    with pytest.raises(InvalidInput, match="no CHAP secret"):
        hd.secrets([{**CHAP, "chap_secret": None}])
