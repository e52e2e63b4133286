"""A lab network: lab hosts, each in its own network namespace, linked by veth pairs
to one bridge in the machine's namespace, so that several "hosts" talk over real
interfaces (live migration, iSCSI) rather than over one shared loopback::

    machine's namespace                     each host's namespace (libvirtd, its QEMUs)
      BRIDGE  PREFIX.1/24  <── veth ──>  eth0  PREFIX.N/24, lo up
      (endpoints that hosts use listen on PREFIX.1)

``start()`` makes the bridge, ``attach(pid)`` gives the namespace of ``pid`` its link
and address, ``stop()`` removes the bridge.  A host's veth pair goes away with its
namespace, that is when its last process (libvirtd and its QEMUs) has exited.
"""

from __future__ import annotations

import random
import subprocess

from .errors import VvhostError


class LabNetError(VvhostError):
    code = "lab-net"
    template = "lab network {net}: {detail}"


class LabNet:
    def __init__(self, name: str | None = None, prefix: str | None = None) -> None:
        tag = f"{random.randrange(1 << 16):04x}"
        self.name = name or f"vvlab{tag}"  # at most 15 characters: an interface name
        self.prefix = prefix or self._free_prefix()
        self._next = 2
        self.up = False

    @property
    def gateway(self) -> str:
        """The bridge's address: where endpoints listen for the lab hosts."""
        return f"{self.prefix}.1"

    def start(self) -> LabNet:
        self._ip("link", "add", self.name, "type", "bridge")
        self.up = True
        self._ip("addr", "add", f"{self.gateway}/24", "dev", self.name)
        self._ip("link", "set", self.name, "up")
        return self

    def attach(self, pid: int) -> str:
        """Link the network namespace of ``pid`` to the bridge; returns its address."""
        n = self._next
        self._next += 1
        outside = f"{self.name}h{n}"[-15:]
        self._ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        self._ip("link", "set", outside, "master", self.name, "up")
        address = f"{self.prefix}.{n}"
        inside = ["nsenter", "--target", str(pid), "--net", "ip"]
        for argv in (
            ["addr", "add", f"{address}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
        ):
            self._run([*inside, *argv])
        return address

    def stop(self) -> None:
        if self.up:
            self._ip("link", "del", self.name)
            self.up = False

    def _free_prefix(self) -> str:
        used = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
        ).stdout
        for _ in range(64):
            prefix = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
            if f" {prefix}." not in used:
                return prefix
        raise LabNetError(net=self.name, detail="no free 10.x.y.0/24 network")

    def _ip(self, *argv: str) -> None:
        self._run(["ip", *argv])

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LabNetError(
                net=self.name, detail=f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}"
            )
