"""Moving a VM to another host that shares the control plane (and so the arrays).

Live (the VM runs)::

    vvhost vm migrate web1 --to qemu+tcp://kvm2/system
      source libvirtd ── peer to peer ──> destination libvirtd     LIVE | PEER2PEER |
                                                                   PERSIST_DEST | UNDEFINE_SOURCE
        destination hook `migrate`   binds the vvols for the destination host, on the
                                     endpoint its host configuration names, and rewrites
                                     the incoming live XML (sources, metadata's endpoint)
        destination hook `prepare`   finds them bound and checks the sources
        ... memory copied while the guest runs, then the switch ...
        source hook `release`        drops the source host's bindings
      then, here: the source's persistent definition (with whatever change waits for
      the next boot) becomes the destination's, pointed at the destination's
      bindings, and the config vvol's document records the host the VM runs on now.
      (Not VIR_MIGRATE_PARAM_PERSIST_XML: libvirt parses and stores that one while
      the guest is stopped, which tripled the downtime.)

A migration that fails or is cancelled leaves the VM running on the source with
its bindings: libvirt stops the incoming domain and the destination's `release`
drops the destination's bindings (bindings are per host).  As a last line, any
binding of the VM's vvols still held by the destination host while no domain of
that name runs there is dropped here too.

Offline (the VM is stopped): the definition moves as ``vvhost vm register`` makes
one (bind for the destination, point the sources, unbind again: iSCSI LUNs keep
their numbers), is defined on the destination and undefined at the source.

The destination's vvhost host name is ``--dest-host``, or else the hostname the
destination libvirtd reports (as ``vvhost host init $(hostname)`` names hosts).
With a host's token (a host reaching the control plane over TLS) the control
plane shows this host only itself: the destination's name is not checked here
(its hook binds with its own token), and the destination's persistent
definition takes the disk sources its hook gave the live domain.  Offline moves
and RBD disks (secrets for the destination) bind for the destination: they need
an admin's token.

Disks that need libvirt secrets (RBD: the host's own Ceph key) get the
destination host's secrets defined on the destination libvirtd first: its hook
cannot do that (it must not call libvirt), and the destination's QEMU opens the
disks with the destination's identity.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import replace
from typing import Any

import libvirt

from ..errors import AlreadyExists, Forbidden, InvalidInput, NotFound, VvhostError
from . import domainxml as dx
from . import handles as hd
from . import libvirtsecrets
from .hook import ensure_bound, undo
from .vmdoc import VmDoc
from .vms import VmManager

LIVE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


class MigrateError(VvhostError):
    code = "migrate-failed"
    status = 409
    exit_code = 4
    template = "cannot migrate VM {vm} to {dest}: {detail}"


HOOK_FAILED = re.compile(r"Hook script execution failed: .*? unexpected exit status \d+: (.*)")


def _one_line(exc: libvirt.libvirtError) -> str:
    """libvirt's message on one line; a failed hook is told by its own words (libvirt
    quotes the hook's whole environment before them)."""
    text = " ".join(str(exc.get_error_message() or exc).split())
    hook = HOOK_FAILED.search(text)
    return f"the destination's hook failed: {hook.group(1)}" if hook else text


class Migration:
    """One VM from the host of ``vms`` to the libvirt at ``dest_uri``."""

    def __init__(
        self,
        vms: VmManager,
        name: str,
        dest_uri: str,
        dest_host: str | None = None,
        migrate_uri: str | None = None,
        bandwidth: int | None = None,
    ) -> None:
        self.vms = vms
        self.client = vms.client
        self.name = name
        self.dest_uri = dest_uri
        self.migrate_uri = migrate_uri
        self.bandwidth = bandwidth
        self._dest_host = dest_host
        self._dest: libvirt.virConnect | None = None

    def fail(self, detail: str) -> MigrateError:
        return MigrateError(vm=self.name, dest=self.dest_uri, detail=detail)

    # -- the destination --------------------------------------------------------------------
    @property
    def dest(self) -> libvirt.virConnect:
        if self._dest is None:
            try:
                self._dest = libvirt.open(self.dest_uri)
            except libvirt.libvirtError as exc:
                raise self.fail(f"cannot connect to libvirt there: {_one_line(exc)}") from None
        return self._dest

    def close(self) -> None:
        if self._dest is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._dest.close()
            self._dest = None

    def dest_host(self) -> str:
        """The destination's vvhost host name, checked against the control plane."""
        name = self._dest_host or self._reported()
        try:
            self.client.host(name)
        except Forbidden:
            # a host's token sees only itself: the destination is the host it says it is
            # (its hook binds with its own token)
            reported = self._reported()
            if name != reported:
                raise self.fail(
                    f"it reports the hostname {reported}, not {name}; with a host's token "
                    "--dest-host cannot name another"
                ) from None
        except NotFound:
            how = "" if self._dest_host else f" (the hostname {self.dest_uri} reports)"
            raise self.fail(
                f"{name}{how} is not a vvhost host; name the destination with --dest-host"
            ) from None
        if name == self.vms.conf.name:
            raise self.fail(f"the destination is this host, {name}")
        return name

    def _reported(self) -> str:
        try:
            return str(self.dest.getHostname())
        except libvirt.libvirtError as exc:
            raise self.fail(f"cannot read its hostname: {_one_line(exc)}") from None

    def _dest_domain(self) -> libvirt.virDomain | None:
        try:
            return self.dest.lookupByName(self.name)
        except libvirt.libvirtError:
            return None

    # -- live -------------------------------------------------------------------------------
    def live(self) -> dict[str, Any]:
        dom = self.vms.domain(self.name)
        root, meta = self.vms._meta(dom)
        if not dom.isActive():
            raise self.fail("it is not running; use --offline to move its definition")
        host = self.dest_host()
        there = self._dest_domain()
        if there is not None and there.isActive():
            raise self.fail(f"a VM named {self.name} already runs there")
        self._dest_secrets(host, root, meta)
        # the persistent definition follows after the switch (see _persist_on_dest):
        # handing it to libvirt (PERSIST_XML) would parse and store it inside the downtime
        inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        start = time.monotonic()
        try:
            dom.migrateToURI3(self.dest_uri, self._params(), LIVE_FLAGS)
        except libvirt.libvirtError as exc:
            self._drop_leftovers(host, meta)
            state = "still runs here" if _active(dom) else "is not running here any more"
            raise self.fail(f"{_one_line(exc)} (the VM {state})") from None
        total = time.monotonic() - start
        moved = self.dest.lookupByName(self.name)
        stats = _completed_stats(moved)
        pe = self._persist_on_dest(moved, host, inactive)
        return {
            "vm": self.name,
            "mode": "live",
            "from": self.vms.conf.name,
            "to": host,
            "uri": self.dest_uri,
            "pe": pe,
            "total_s": round(total, 3),
            "elapsed_ms": stats.get("time_elapsed"),
            "downtime_ms": stats.get("downtime"),
            "data_bytes": stats.get("data_processed"),
        }

    def _dest_secrets(self, host: str, root: dx.ET.Element, meta: dx.VmMeta) -> None:
        """Define on the destination libvirtd the secrets its QEMU will need for the
        VM's disks (bound for the destination host for a moment to learn them).
        When that was the host's last binding its Ceph identity goes and comes back
        with a new key at the hook's ``migrate``: the incoming QEMU then reads the
        current key from the file the hook wrote (see host/qemuwrap.py)."""
        protocols = {
            src.get("protocol", "")
            for target in meta.disks
            for src in dx.chain_sources(root, target) or []
        }
        if not any(hd.uses_secrets(p) for p in protocols):
            return
        handles, made = ensure_bound(self.client, host, meta, meta.pe, None)
        try:
            libvirtsecrets.define_all(self.dest, hd.secrets(handles.values()))
        except VvhostError as exc:
            raise self.fail(f"cannot give the destination its disk secrets: {exc}") from None
        finally:
            undo(self.client, host, made)

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.migrate_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = self.migrate_uri
        if self.bandwidth:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth
        return params

    def _drop_leftovers(self, host: str, meta: dx.VmMeta) -> None:
        """After a failed migration: the destination's own `release` has dropped its
        bindings; should libvirt have failed before it had a domain to stop, drop
        what the destination still holds of this VM while nothing runs there."""
        with contextlib.suppress(VvhostError, libvirt.libvirtError):
            there = self._dest_domain()
            if there is not None and there.isActive():
                return
            bound = {b["vvol"] for b in self.client.bindings(host=host)}
            undo(self.client, host, [v for v in meta.all_vvols() if v in bound])

    def _persist_on_dest(self, moved: libvirt.virDomain, host: str, inactive: str) -> str | None:
        """Make the source's persistent definition (``inactive``: with any change
        waiting for the next boot) the destination's, pointed at the destination's
        bindings (the endpoint its hook chose is in the live metadata), and record
        where the VM runs now."""
        live = dx.meta(dx.parse(moved.XMLDesc(0)))
        root = dx.parse(inactive)
        meta = dx.meta(root)
        if live is None or meta is None:
            raise self.fail("the destination's definition lost its vvhost metadata")
        meta = replace(meta, pe=live.pe)
        try:
            # an admin sees the destination's bindings; a host's token only its own:
            # then the sources are those the destination's hook gave the live domain
            mine = self.client.bindings(host=host)
            bound = {b["vvol"]: b for b in mine if b.get("host") == host}
            dx.set_meta(root, meta)
            if all(v in bound for v in meta.all_vvols()):
                dx.point_sources(root, meta, {v: bound[v] for v in meta.all_vvols()})
            else:
                migratable = libvirt.VIR_DOMAIN_XML_MIGRATABLE
                dx.copy_disk_sources(root, dx.parse(moved.XMLDesc(migratable)), meta)
            self.dest.defineXML(dx.tostring(root))
            record(self.client, meta, root, host)
        except (KeyError, VvhostError, libvirt.libvirtError) as exc:
            detail = _one_line(exc) if isinstance(exc, libvirt.libvirtError) else str(exc)
            raise self.fail(
                f"the VM runs on {host} now, but its definition there was not updated "
                f"({detail}); run `vvhost vm refresh {self.name}` on {host}"
            ) from None
        return meta.pe

    # -- offline ----------------------------------------------------------------------------
    def offline(self) -> dict[str, Any]:
        dom = self.vms.domain(self.name)
        root, meta = self.vms._meta(dom)
        if dom.isActive():
            raise self.fail("it is running; leave out --offline to migrate it live")
        host = self.dest_host()
        if self._dest_domain() is not None:
            raise AlreadyExists(kind="VM", ref=f"{self.name} on {host}")
        start = time.monotonic()
        handles, made = ensure_bound(self.client, host, meta, meta.pe, None)
        try:
            dx.point_sources(root, meta, handles)
            libvirtsecrets.define_all(self.dest, hd.secrets(handles.values()))
        except libvirtsecrets.SecretError as exc:
            raise self.fail(f"cannot give the destination its disk secrets: {exc}") from None
        finally:
            undo(self.client, host, made)
        xml = dx.tostring(root)
        try:
            self.dest.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise self.fail(f"the destination refused the definition: {_one_line(exc)}") from None
        try:
            dom.undefine()
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                self.dest.lookupByName(self.name).undefine()
            raise self.fail(f"cannot undefine it here: {_one_line(exc)}") from None
        record(self.client, meta, root, host)
        return {
            "vm": self.name,
            "mode": "offline",
            "from": self.vms.conf.name,
            "to": host,
            "uri": self.dest_uri,
            "pe": meta.pe,
            "total_s": round(time.monotonic() - start, 3),
            "elapsed_ms": None,
            "downtime_ms": None,
            "data_bytes": None,
        }


def record(client: Any, meta: dx.VmMeta, root: dx.ET.Element, host: str) -> None:
    """The config vvol's document: the definition as the VM's host has it, its
    endpoint, and that host (the snapshot tree stays as it is)."""
    if not meta.config:
        return
    doc = VmDoc.load(client, meta.config)
    doc.xml, doc.pe, doc.host = dx.tostring(root), meta.pe, host
    doc.save(client)


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


def _completed_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    """libvirt's statistics of the finished migration (handed to the destination
    with the last migration cookie, since UNDEFINE_SOURCE removes the source's
    domain): time_elapsed and downtime in ms, data_processed in bytes."""
    try:
        stats: dict[str, Any] = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return {}
    return stats


def migrate(
    vms: VmManager,
    name: str,
    dest_uri: str,
    *,
    offline: bool = False,
    dest_host: str | None = None,
    migrate_uri: str | None = None,
    bandwidth: int | None = None,
) -> dict[str, Any]:
    if bandwidth is not None and bandwidth <= 0:
        raise InvalidInput(detail="--bandwidth is MiB/s, more than 0")
    job = Migration(vms, name, dest_uri, dest_host, migrate_uri, bandwidth)
    try:
        return job.offline() if offline else job.live()
    finally:
        job.close()
