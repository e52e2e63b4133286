"""Opening an iSCSI binding from a test the way its host does: with the host's
initiator name and the CHAP account its handle carries.

libiscsi (iscsi-ls, iscsi-inq, QEMU's iscsi driver) takes CHAP in the URL:
``iscsi://USER%SECRET@PORTAL/TARGET/LUN``.  Tests may put a secret on a command
line; vvhost itself never does (it passes a file to QEMU, a libvirt secret to
libvirt).
"""

from __future__ import annotations

from typing import Any


def creds(user: str | None, secret: str | None) -> str:
    if not user:
        return ""
    return f"{user}%{secret}@" if secret else f"{user}@"


def authed(handle: dict[str, Any], user: str | None = None, secret: str | None = None) -> str:
    """The handle's URI, logging in with its CHAP account (or ``user``/``secret``);
    any other protocol's URI as it is."""
    uri = str(handle["uri"])
    if not uri.startswith("iscsi://"):
        return uri
    user = user if user is not None else handle.get("chap_user")
    secret = secret if secret is not None else handle.get("chap_secret")
    return "iscsi://" + creds(user, secret) + uri.removeprefix("iscsi://")


def portal_url(handle: dict[str, Any]) -> str:
    """``iscsi://[CHAP@]PORTAL`` for iscsi-ls."""
    return "iscsi://" + creds(handle.get("chap_user"), handle.get("chap_secret")) + handle["portal"]


def image_opts(handle: dict[str, Any], initiator: str, secret_id: str = "chap0") -> list[str]:
    """qemu-img/qemu-io arguments opening the LUN as raw with ``--image-opts``,
    as ``initiator`` with the handle's CHAP account (its secret in an --object)."""
    opts = (
        f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={handle['portal']},"
        f"file.target={handle['target']},file.lun={handle['lun']},file.initiator-name={initiator}"
    )
    if not handle.get("chap_user"):
        return ["--image-opts", opts]
    opts += f",file.user={handle['chap_user']},file.password-secret={secret_id}"
    obj = f"secret,id={secret_id},data={handle['chap_secret']}"
    return ["--object", obj, "--image-opts", opts]
