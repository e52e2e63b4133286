"""This host's iSCSI CHAP secret, where libvirt and QEMU/qemu-img find it.

An ``iscsi`` binding handle of a per-host target carries the host's CHAP
account: ``chap_user`` (new on every rotation) and ``chap_secret``. The host
keeps the secret in two places, never on a command line::

    libvirtd   secret, usage type iscsi        <secret ephemeral='no' private='yes'>
               uuid = uuid5(vvhost, "iscsi USER")        (the hook writes it into
               usage target "vvhost iscsi USER"           <auth> without asking libvirt)
               value = the secret's bytes
    iscsi_dir/ 0700   next to the host's ``ceph_dir`` (default /etc/vvhost/iscsi)
      USER.secret 0600  QEMU's ``--object secret,file=...`` (qemu-img, blockdev nodes)

As for Ceph keys (host/cephsecret.py), the libvirt secret is defined by the
``vvhost vm`` commands, never by the hook.
"""

from __future__ import annotations

import os
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import InvalidInput
from . import secretfile

_NAMESPACE = uuid.UUID("0b5e7a52-8d2c-5f0e-b1d4-3c6a9e7f2a10")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")


def check_user(user: str) -> str:
    if not _USER.fullmatch(user):
        raise InvalidInput(detail=f"bad iSCSI CHAP user name {user!r} in a binding")
    return user


def secret_uuid(user: str) -> str:
    """The libvirt secret UUID of CHAP user ``user`` on every host."""
    return str(uuid.uuid5(_NAMESPACE, f"iscsi {user}"))


def object_id(user: str) -> str:
    """The QOM id of the secret object holding ``user``'s CHAP secret."""
    return "vviscsi-" + re.sub(r"[^A-Za-z0-9_.-]", "_", user)


@dataclass(frozen=True)
class IscsiSecret:
    """The libvirt secret holding CHAP user ``user``'s secret."""

    user: str
    secret: str

    @property
    def uuid(self) -> str:
        return secret_uuid(self.user)

    def xml(self) -> str:
        root = ET.Element("secret", ephemeral="no", private="yes")
        ET.SubElement(root, "uuid").text = self.uuid
        ET.SubElement(root, "description").text = f"vvhost: iSCSI CHAP secret of {self.user}"
        usage = ET.SubElement(root, "usage", type="iscsi")
        ET.SubElement(usage, "target").text = f"vvhost iscsi {self.user}"
        return ET.tostring(root, encoding="unicode")

    def value(self) -> bytes:
        return self.secret.encode()


def secret_dir(ceph_dir: str) -> str:
    """Where the host keeps CHAP secret files: ``iscsi`` beside its Ceph directory."""
    return os.path.join(os.path.dirname(os.path.abspath(ceph_dir)), "iscsi")


def write_secret(directory: str, user: str, secret: str) -> str:
    """Keep ``secret`` in ``directory/USER.secret`` (0600, directory 0700)."""
    path = os.path.join(directory, f"{check_user(user)}.secret")
    return secretfile.keep(path, secret, "the iSCSI CHAP secret")
