"""Hosts in their own network namespaces reach the control plane only over the lab
network with TLS and their tokens (tests/netlab.py); once a host is fenced, every
command it runs is refused with one line, while the other host goes on; a VM of a
frozen host comes back on the other one in that topology."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.test_fencing_vms import fence_and_recover
from tests.netlab import net_lab
from tests.patterns import Patterns
from vvhost.daemon import free_port
from vvhost.guest import GuestImage


def test_fenced_host_on_the_lab_network_gets_nothing(tmp_path: str) -> None:
    with net_lab(str(tmp_path)) as lab:
        lab.admin.tenant_create("alpha")
        lab.admin.container_create("pool", "1G")
        lab.admin.datastore_create("ds", "256M", ["pool"], tenant="alpha")
        for name in ("kvm1", "kvm2"):
            lab.add_host(name, tenant="alpha")

        # the control plane's loopback is not the host's: only the bridge leads there
        port = int(lab.url.rpartition(":")[2])
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"
        cut = subprocess.run(
            [*lab.netns("kvm1"), sys.executable, "-c", probe], capture_output=True, check=False
        )
        assert cut.returncode != 0

        made = lab.vvhost("kvm1", "vvol", "create", "--datastore", "ds", "--size", "8M",
                          "--name", "v1", "--json")  # fmt: skip
        assert made.returncode == 0, made.stderr
        vid = json.loads(made.stdout)["id"]
        shown = lab.vvhost("kvm1", "host", "show", "kvm1", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["state"] == "ok"

        lab.admin.host_fence("kvm1")
        for args in (("host", "show", "kvm1"), ("vvol", "list"), ("vvol", "show", vid)):
            denied = lab.vvhost("kvm1", *args)
            lines = denied.stderr.strip().splitlines()
            assert denied.returncode == 4 and len(lines) == 1, (args, denied.stderr)
            assert "host kvm1 is fenced" in lines[0] and "Traceback" not in denied.stderr
        other = lab.vvhost("kvm2", "vvol", "show", vid, "--json")
        assert other.returncode == 0 and json.loads(other.stdout)["id"] == vid
        states = {h["name"]: h["state"] for h in lab.admin.hosts()}
        assert states == {"kvm1": "fenced", "kvm2": "ok"}

        lab.admin.host_unfence("kvm1")
        again = lab.vvhost("kvm1", "vvol", "show", vid, "--json")
        assert again.returncode == 0, again.stderr


def test_vm_of_a_fenced_host_comes_back_on_the_lab_network(
    tmp_path: str, guest: GuestImage
) -> None:
    """The frozen-VM scenario of test_fencing_vms.py with both hosts in their own
    namespaces: the hook and every vvhost command go over TLS with the host's
    token, iSCSI over the lab bridge."""
    with net_lab(str(tmp_path), guest) as lab:
        lab.admin.tenant_create("alpha")
        lab.admin.container_create("pool", "2G")
        lab.admin.datastore_create("ds", "2G", ["pool"], tenant="alpha")
        lab.admin.pe_create("iscsi0", "iscsi", portal=f"{lab.net.gateway}:{free_port()}")
        for name in ("kvm1", "kvm2"):
            lab.add_host(name, tenant="alpha")
        fence_and_recover(lab, "iscsi", Patterns())  # type: ignore[arg-type]
