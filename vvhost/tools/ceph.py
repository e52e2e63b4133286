"""Thin typed wrapper over librados for talking to a Ceph cluster's monitors.

Every request is a JSON monitor command sent with ``Rados.mon_command``; the
reply is JSON (``"format": "json"``) and is never scraped from ``ceph`` CLI
text::

    Ceph(CephClient(conf, user, keyring, timeout))
      connect()        rados.Rados(conffile=conf, rados_id=user,
                                   conf={keyring, client_mount_timeout,
                                         rados_mon_op_timeout, rados_osd_op_timeout})
      command(prefix, **args)  ->  mon_command('{"prefix": ..., "format": "json", ...}', inbuf)
                                   (ret < 0, outs)  ->  CephError / CephDenied / CephUnreachable

    verb                        monitor command
    health() / status()         health / status
    pool_exists / pool_create   (librados) / osd pool create
    pool_application_enable     osd pool application enable
    pool_delete                 osd pool delete
    auth_get_or_create          auth get-or-create  ENTITY mon CAP osd CAP ...
    auth_caps / auth_rm         auth caps / auth rm
    auth_ls / auth_get_key      auth ls (names only) / auth get-key
    blocklist_add/rm/ls         osd blocklist add|rm|ls
    mon_addrs / mon_endpoints   mon dump
    minimal_conf                config generate-minimal-conf

Short timeouts (``timeout`` seconds, 10 by default) make an unreachable
cluster fail in seconds with :class:`CephUnreachable` instead of hanging.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import rados

from ..errors import CephDenied, CephError, CephUnreachable, NotFound

__all__ = ["Ceph", "CephClient", "blocklist_add_args", "entity_addr", "keyring_text", "rbd_caps"]

_UNREACHABLE = {errno.ETIMEDOUT, errno.ENOTCONN, errno.ECONNREFUSED, errno.ESHUTDOWN}
_DENIED = {errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class CephClient:
    """How to reach a cluster: its ceph.conf, a client id (no ``client.``) and its keyring."""

    conf: str | None = None  # None: librados' default search (/etc/ceph/ceph.conf)
    user: str = "admin"
    keyring: str | None = None  # None: what ceph.conf says
    timeout: float = 10.0

    def label(self) -> str:
        return self.conf or "(default ceph.conf)"


def rbd_caps(pool: str, namespaces: list[str]) -> dict[str, str]:
    """Capabilities of an RBD client limited to ``namespaces`` of ``pool``.

    ``{"mon": "profile rbd", "osd": "profile rbd pool=P namespace=A, profile rbd
    pool=P namespace=B"}``; with no namespace the client may touch nothing.
    """
    osd = ", ".join(f"profile rbd pool={pool} namespace={ns}" for ns in namespaces)
    return {"mon": "profile rbd", "osd": osd}


def keyring_text(entity: str, key: str) -> str:
    """A keyring file holding one key (what a host gets next to its minimal ceph.conf)."""
    return f"[{entity}]\n\tkey = {key}\n"


def _caps_list(caps: dict[str, str]) -> list[str]:
    out: list[str] = []
    for service, cap in caps.items():
        out += [service, cap]
    return out


def _errno(exc: BaseException) -> int:
    value = getattr(exc, "errno", None)
    return abs(value) if isinstance(value, int) else 0


class Ceph:
    """One librados connection (a context manager); each method is one monitor command."""

    def __init__(self, client: CephClient) -> None:
        self.client = client
        self._rados: Any = None

    # -- connection -------------------------------------------------------

    def __enter__(self) -> Ceph:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Ceph:
        t = str(max(1, int(self.client.timeout)))
        conf = {"client_mount_timeout": t, "rados_mon_op_timeout": t, "rados_osd_op_timeout": t}
        if self.client.keyring:
            conf["keyring"] = self.client.keyring
        try:
            handle = rados.Rados(
                conffile=self.client.conf or "", rados_id=self.client.user, conf=conf
            )
        except rados.Error as exc:
            if _errno(exc) == errno.ENOENT:
                where = self.client.conf or "/etc/ceph/ceph.conf"
                raise CephError(
                    cluster=self.client.label(),
                    detail=f"no ceph.conf at {where}",
                    errno=errno.ENOENT,
                ) from None
            raise self._error(exc, "reading the configuration") from None
        try:
            handle.connect(timeout=int(t))
        except rados.Error as exc:
            handle.shutdown()
            raise self._error(exc, "connecting", connecting=True) from None
        self._rados = handle
        return self

    def close(self) -> None:
        if self._rados is not None:
            self._rados.shutdown()
            self._rados = None

    @property
    def rados(self) -> Any:
        """The connected ``rados.Rados`` handle (for librbd and object I/O)."""
        if self._rados is None:
            raise CephError(cluster=self.client.label(), detail="not connected", errno=0)
        return self._rados

    @contextmanager
    def ioctx(self, pool: str, namespace: str = "") -> Iterator[Any]:
        """A ``rados.Ioctx`` on ``pool`` (and RADOS ``namespace``), closed afterwards."""
        try:
            ctx = self.rados.open_ioctx(pool)
        except rados.ObjectNotFound:
            raise NotFound(kind="ceph pool", ref=pool) from None
        except rados.Error as exc:
            raise self._error(exc, f"opening pool {pool}") from None
        try:
            ctx.set_namespace(namespace)
            yield ctx
        finally:
            ctx.close()

    def client_addrs(self) -> str:
        """This client's own address vector (what ``osd blocklist add`` fences)."""
        return str(self.rados.get_addrs())

    def fsid(self) -> str:
        return str(self.rados.get_fsid())

    # -- generic command ----------------------------------------------------

    def command(self, prefix: str, inbuf: bytes = b"", **args: Any) -> Any:
        """Send one monitor command; return its decoded JSON reply (None when empty)."""
        docs = self.command_docs(prefix, inbuf, **args)
        return docs[0] if docs else None

    def command_docs(self, prefix: str, inbuf: bytes = b"", **args: Any) -> list[Any]:
        """Every JSON document of a reply (``osd blocklist ls`` prints two in a row)."""
        text = self.command_raw(prefix, inbuf, **{"format": "json", **args}).decode()
        decoder = json.JSONDecoder()
        docs, pos = [], 0
        while pos < len(text):
            if text[pos].isspace():
                pos += 1
                continue
            try:
                doc, pos = decoder.raw_decode(text, pos)
            except ValueError:
                raise CephError(
                    cluster=self.client.label(), detail=f"{prefix}: reply is not JSON", errno=0
                ) from None
            docs.append(doc)
        return docs

    def command_raw(self, prefix: str, inbuf: bytes = b"", **args: Any) -> bytes:
        cmd = json.dumps({"prefix": prefix, **args})
        try:
            ret, out, outs = self.rados.mon_command(cmd, inbuf)
        except rados.Error as exc:
            raise self._error(exc, prefix) from None
        if ret < 0:
            raise self._failed(-ret, f"{prefix}: {outs.strip() or errno.errorcode.get(-ret, ret)}")
        return bytes(out)

    # -- health ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return dict(self.command("status"))

    def health(self) -> str:
        """``HEALTH_OK``, ``HEALTH_WARN`` or ``HEALTH_ERR``."""
        return str(self.command("health")["status"])

    def health_checks(self) -> dict[str, str]:
        """Failing health checks: name -> summary message."""
        checks = self.command("health").get("checks") or {}
        return {name: str(c.get("summary", {}).get("message", "")) for name, c in checks.items()}

    # -- pools ------------------------------------------------------------------

    def pool_exists(self, pool: str) -> bool:
        try:
            return bool(self.rados.pool_exists(pool))
        except rados.Error as exc:
            raise self._error(exc, f"looking up pool {pool}") from None

    def pool_create(self, pool: str, pg_num: int = 8) -> None:
        self.command(
            "osd pool create", pool=pool, pg_num=pg_num, pgp_num=pg_num, pool_type="replicated"
        )

    def pool_application_enable(self, pool: str, app: str) -> None:
        self.command("osd pool application enable", pool=pool, app=app)

    def pool_delete(self, pool: str) -> None:
        """Delete ``pool`` (needs ``mon_allow_pool_delete``); a missing pool is fine."""
        self.command("osd pool delete", pool=pool, pool2=pool, yes_i_really_really_mean_it=True)

    # -- identities ---------------------------------------------------------------

    def auth_get_or_create(self, entity: str, caps: dict[str, str]) -> str:
        """The key of ``entity`` (``client.NAME``), created with ``caps`` if it is new.

        An existing entity with other caps is refused by the monitors (a
        :class:`CephError`): change caps with :meth:`auth_caps`.
        """
        reply = self.command("auth get-or-create", entity=entity, caps=_caps_list(caps))
        return str(reply[0]["key"])

    def auth_caps(self, entity: str, caps: dict[str, str]) -> None:
        """Replace every capability of ``entity`` with ``caps``."""
        self.command("auth caps", entity=entity, caps=_caps_list(caps))

    def auth_rm(self, entity: str) -> None:
        """Remove ``entity`` and its key; removing a missing entity is fine."""
        self.command("auth rm", entity=entity)

    def auth_ls(self) -> list[str]:
        """Names of every entity the monitors know (``client.admin``, ``osd.0``, ...)."""
        reply = self.command("auth ls")
        return sorted(str(e["entity"]) for e in reply.get("auth_dump", []))

    def auth_get_key(self, entity: str) -> str:
        try:
            return str(self.command("auth get-key", entity=entity)["key"])
        except CephError as exc:
            if exc.fields.get("errno") == errno.ENOENT:
                raise NotFound(kind="ceph identity", ref=entity) from None
            raise

    def auth_caps_of(self, entity: str) -> dict[str, str]:
        """The capabilities of ``entity`` (service -> cap string)."""
        try:
            reply = self.command("auth get", entity=entity)
        except CephError as exc:
            if exc.fields.get("errno") == errno.ENOENT:
                raise NotFound(kind="ceph identity", ref=entity) from None
            raise
        return {str(k): str(v) for k, v in reply[0].get("caps", {}).items()}

    # -- fencing ---------------------------------------------------------------------

    def blocklist_add(self, addr: str, expire: float | None = None) -> None:
        """Fence the client at ``addr`` (``IP:PORT/NONCE`` or an address vector)."""
        self.command("osd blocklist", **blocklist_add_args(addr, expire))

    def blocklist_rm(self, addr: str) -> None:
        self.command("osd blocklist", blocklistop="rm", addr=entity_addr(addr))

    def blocklist_ls(self) -> list[str]:
        """Fenced addresses (``IP:PORT/NONCE``); the reply is a list of clients, then of ranges."""
        docs = self.command_docs("osd blocklist ls")
        return sorted(str(e["addr"]) for doc in docs for e in doc)

    # -- monitors ---------------------------------------------------------------------

    def mon_addrs(self) -> list[str]:
        """Each monitor's address vector, ``[v2:IP:PORT/0,v1:IP:PORT/0]`` (``mon_host`` form)."""
        out = []
        for mon in self.command("mon dump").get("mons", []):
            vec = mon.get("public_addrs", {}).get("addrvec", [])
            parts = [f"{a['type']}:{a['addr']}/{a.get('nonce', 0)}" for a in vec]
            out.append("[" + ",".join(parts) + "]")
        return out

    def mon_endpoints(self, msgr: str = "v1") -> list[tuple[str, int]]:
        """(IP, port) of each monitor for protocol ``msgr`` (``v1`` or ``v2``).

        A plain ``IP:PORT`` (libvirt ``<host name= port=>``, QEMU ``server``)
        is read by librados as msgr v1 unless the port is 3300: hand out v1.
        """
        out = []
        for mon in self.command("mon dump").get("mons", []):
            for a in mon.get("public_addrs", {}).get("addrvec", []):
                if a.get("type") == msgr:
                    ip, port = str(a["addr"]).rsplit(":", 1)
                    out.append((ip.strip("[]"), int(port)))
        return out

    def minimal_conf(self) -> str:
        """A minimal ceph.conf for clients (fsid and mon_host), as the monitors make it."""
        return self.command_raw("config generate-minimal-conf").decode()

    # -- errors -----------------------------------------------------------------------

    def _failed(self, code: int, detail: str) -> CephError:
        label = self.client.label()
        if code in _DENIED:
            return CephDenied(
                cluster=label, user=f"client.{self.client.user}", detail=detail, errno=code
            )
        if code in _UNREACHABLE:
            return CephUnreachable(cluster=label, detail=detail, errno=code)
        return CephError(cluster=label, detail=detail, errno=code)

    def _error(self, exc: BaseException, doing: str, connecting: bool = False) -> CephError:
        code = _errno(exc)
        text = str(exc).strip() or type(exc).__name__
        if connecting and code not in _DENIED:
            return CephUnreachable(
                cluster=self.client.label(), detail=f"{doing}: {text}", errno=code
            )
        return self._failed(code, f"{doing}: {text}")


def blocklist_add_args(addr: str, expire: float | None = None) -> dict[str, Any]:
    """The arguments of ``osd blocklist`` that fence the client at ``addr``."""
    args: dict[str, Any] = {"blocklistop": "add", "addr": entity_addr(addr)}
    if expire is not None:
        args["expire"] = float(expire)
    return args


def entity_addr(addr: str) -> str:
    """``[v2:1.2.3.4:5/6,v1:...]`` -> ``1.2.3.4:5/6``: one client's address as a
    blocklist takes and shows it, from what librados reports."""
    addr = addr.strip()
    if addr.startswith("["):
        first = addr.strip("[]").split(",")[0]
        addr = first.split(":", 1)[1] if first.startswith(("v1:", "v2:", "any:")) else first
    elif addr.startswith(("v1:", "v2:", "any:")):
        addr = addr.split(":", 1)[1]
    return addr
