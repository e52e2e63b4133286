"""This host's Ceph key, where libvirt and qemu-img find it.

An ``rbd`` binding handle carries the host's own Ceph identity: ``user``
(``vvhost-HOST``, the client id without ``client.``) and its cephx ``key``
(base64). The host keeps it in two places::

    libvirtd   secret, usage type ceph          <secret ephemeral='no' private='yes'>
               uuid = uuid5(vvhost, "ceph client.USER")   (the same on every run, so
               usage name "vvhost client.USER"             the hook writes it into
               value = the key's raw bytes                 <auth> without asking libvirt)
    ceph_dir/  0700   host.conf ``ceph_dir`` (default /etc/vvhost/ceph)
      USER.key 0600   the key, base64: qemu-img's ``--object secret,file=...,format=base64``

The key is the same for every binding of the host; it changes only when the
host's token is rotated (the control plane then makes the identity anew).
Defining the libvirt secret (host/libvirtsecrets.py) calls libvirt, so it is
done by the ``vvhost vm`` commands that create, define or start domains, never
by the hook (a hook that calls its own libvirtd deadlocks). Both steps are
idempotent; the file is rewritten only when the key differs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from ..errors import InvalidInput
from . import libvirtsecrets, secretfile

DEFAULT_DIR = "/etc/vvhost/ceph"
_NAMESPACE = uuid.UUID("6c1f4d0e-2b8a-5b7e-9a53-7a8d1c0e6f21")


def secret_uuid(user: str) -> str:
    """The libvirt secret UUID of Ceph user ``user`` on every host."""
    return str(uuid.uuid5(_NAMESPACE, f"ceph client.{user}"))


def key_bytes(key: str) -> bytes:
    """A cephx key's raw bytes; bad base64 is refused."""
    try:
        return base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(detail="the binding's Ceph key is not base64") from None


@dataclass(frozen=True)
class CephSecret:
    """The libvirt secret holding Ceph user ``user``'s key."""

    user: str
    key: str  # base64, as ``ceph auth get-key`` prints it

    @property
    def uuid(self) -> str:
        return secret_uuid(self.user)

    @property
    def usage(self) -> str:
        return f"vvhost client.{self.user}"

    def xml(self) -> str:
        root = ET.Element("secret", ephemeral="no", private="yes")
        ET.SubElement(root, "uuid").text = self.uuid
        ET.SubElement(root, "description").text = f"vvhost: Ceph key of client.{self.user}"
        usage = ET.SubElement(root, "usage", type="ceph")
        ET.SubElement(usage, "name").text = self.usage
        return ET.tostring(root, encoding="unicode")

    def value(self) -> bytes:
        return key_bytes(self.key)


def remove(conn: libvirt.virConnect, user: str) -> bool:
    """Drop Ceph user ``user``'s secret from libvirtd; False if there was none."""
    return libvirtsecrets.remove(conn, secret_uuid(user))


def key_path(directory: str, user: str) -> str:
    if not user or "/" in user or user.startswith("."):
        raise InvalidInput(detail=f"bad Ceph user name {user!r} in a binding")
    return os.path.join(directory, f"{user}.key")


def write_key(directory: str, user: str, key: str) -> str:
    """Keep ``key`` in ``directory/USER.key`` (0600, directory 0700); returns the path."""
    key_bytes(key)  # refuse garbage before it reaches a file QEMU reads
    return secretfile.keep(key_path(directory, user), key, "the Ceph key")


def drop_key(directory: str, user: str) -> None:
    """Forget the key file of ``user`` (nothing if there is none)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(key_path(directory, user))
