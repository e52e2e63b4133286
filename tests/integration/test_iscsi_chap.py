"""iSCSI endpoints authenticate the host with its own CHAP account, against a
real tgtd and real initiators (libiscsi's iscsi-inq/iscsi-ls, qemu-img):

- a host's target admits its initiator name with its CHAP account only: not
  without CHAP, not with a wrong secret, not with another host's account;
- the secret is in the host's own handles only (not in host listings, events,
  the audit or another host's handles; over TLS, a host's token reads only its own);
- token-rotate switches the target to a new account at once (the old one fails);
- an account removed behind vvhost's back is reported by ``audit`` and restored
  by the endpoint's reconciliation;
- ``host fence`` and ``host remove`` take the account out of tgtd.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.iscsiauth import authed, image_opts, portal_url
from tests.patterns import Patterns
from tests.runner import run
from tests.tenancylab import tls_lab
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import VvhostError
from vvhost.tools.tgtadm import Tgtadm

IQN_1 = "iqn.2026-11.test.vvhost:chap1"
IQN_2 = "iqn.2026-11.test.vvhost:chap2"
MiB = 1 << 20


class ChapPlane:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.server = ServerProcess(
            os.path.join(tmp, "state"), os.path.join(tmp, "s.sock"), private_tgtd=True
        ).start()
        self.api = self.server.client()

    def restart(self) -> None:
        self.api.close()
        self.server.stop()
        self.server = ServerProcess(
            self.server.state_dir, self.server.socket, private_tgtd=True
        ).start()
        self.api = self.server.client()

    def control(self) -> Tgtadm:
        port = int(self.api.pe("iscsi1")["config"]["control_port"])
        tgt = Tgtadm(port)
        tgt.ipc.path = os.path.join(self.server.state_dir, "run-tgtd", f"socket.{port}")
        return tgt


@pytest.fixture
def cp(tmp_path: str) -> Iterator[ChapPlane]:
    p = ChapPlane(str(tmp_path))
    try:
        p.api.container_create("pool", "1G")
        p.api.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
        yield p
    finally:
        p.api.close()
        p.server.stop()


def inq(iqn: str, handle: dict[str, Any], **account: str) -> subprocess.CompletedProcess[str]:
    """iscsi-inq (VPD 0x80, the unit serial) logged in as ``iqn``, with the handle's
    CHAP account or the ``user``/``secret`` given ("" for none)."""
    uri = authed(handle, account.get("user"), account.get("secret"))
    return run("iscsi-inq", "-i", iqn, "-e", "1", "-c", "128", uri, ok=False)


def read_lun(cp: ChapPlane, handle: dict[str, Any], iqn: str, name: str) -> str:
    """A copy of the LUN read by qemu-img over iSCSI as ``iqn`` with CHAP."""
    out = os.path.join(cp.tmp, f"{name}.raw")
    run("qemu-img", "convert", *image_opts(handle, iqn), "-O", "raw", out)
    return out


def bound(cp: ChapPlane, host: str, vvol_id: str) -> dict[str, Any]:
    [h] = [b for b in cp.api.bindings(host=host) if b["vvol"] == vvol_id]
    return h


def test_target_admits_its_host_with_its_own_chap_account_only(
    cp: ChapPlane, patterns: Patterns
) -> None:
    cp.api.host_add("h1", IQN_1)
    cp.api.host_add("h2", IQN_2)
    d = cp.api.vvol_create("pool", "16M", name="d")
    cp.api.vvol_create("pool", "16M", name="e")
    patterns.write(d["path"], "d", [0, 3 * MiB])
    h1 = cp.api.bind_one("d", "h1", pe="iscsi1")
    h2 = cp.api.bind_one("e", "h2", pe="iscsi1")
    assert h1["chap_user"].startswith("h1.") and h2["chap_user"].startswith("h2.")
    assert h1["chap_secret"] != h2["chap_secret"] and len(h1["chap_secret"]) >= 24
    # its own initiator name and account: in, and the data checks out
    ok = inq(IQN_1, h1)
    assert ok.returncode == 0 and d["id"].replace("-", "") in ok.stdout, ok.stderr
    copy = read_lun(cp, h1, IQN_1, "d")
    patterns.check(copy, "d", [0, 3 * MiB])
    assert Patterns.sha(copy) == Patterns.sha(d["path"])
    # h1's initiator name without CHAP, with a wrong secret, with h2's account: out
    assert inq(IQN_1, h1, user="", secret="").returncode != 0
    assert inq(IQN_1, h1, secret="0" * 24).returncode != 0
    assert inq(IQN_1, h1, user=h2["chap_user"], secret=h2["chap_secret"]).returncode != 0
    # h2's own account under its own name does not open h1's target either
    assert inq(IQN_2, h1, user=h2["chap_user"], secret=h2["chap_secret"]).returncode != 0
    assert inq(IQN_2, h2).returncode == 0
    # discovery shows h2 nothing of h1's
    assert h1["target"] not in run("iscsi-ls", "-i", IQN_2, "-s", portal_url(h2)).stdout
    # the secret is in h1's own handles only
    secret = h1["chap_secret"]
    shown = json.dumps(
        [
            cp.api.hosts(),
            cp.api.host("h1"),
            cp.api.events(limit=1000),
            cp.api.audit(),
            cp.api.bindings(host="h2"),
        ]
    )
    assert secret not in shown
    assert bound(cp, "h1", d["id"])["chap_secret"] == secret
    assert cp.api.audit()["ok"], cp.api.audit()
    # tgtd holds exactly one account per host target
    tgt = cp.control()
    assert sorted(tgt.accounts()) == sorted([h1["chap_user"], h2["chap_user"]])
    by_iqn = {t.iqn: t.accounts for t in tgt.show()}
    assert by_iqn == {h1["target"]: [h1["chap_user"]], h2["target"]: [h2["chap_user"]]}


def test_rotation_restart_and_repair_keep_the_current_account(
    cp: ChapPlane, patterns: Patterns
) -> None:
    cp.api.host_add("h1", IQN_1)
    d = cp.api.vvol_create("pool", "16M", name="d")
    patterns.write(d["path"], "d", [MiB])
    old = cp.api.bind_one("d", "h1", pe="iscsi1")
    assert inq(IQN_1, old).returncode == 0
    cp.api.host_token_rotate("h1")
    new = bound(cp, "h1", d["id"])
    assert new["chap_user"] != old["chap_user"] and new["chap_secret"] != old["chap_secret"]
    assert inq(IQN_1, old).returncode != 0  # stale after the rotation
    assert inq(IQN_1, new, user=new["chap_user"], secret=old["chap_secret"]).returncode != 0
    assert inq(IQN_1, new).returncode == 0
    assert cp.control().accounts() == [new["chap_user"]]  # the old account is gone
    # a restart of the control plane adopts tgtd with its accounts as they are
    cp.restart()
    assert inq(IQN_1, new).returncode == 0 and inq(IQN_1, old).returncode != 0
    assert cp.api.audit()["ok"], cp.api.audit()
    # someone deletes the account: the target asks for no CHAP any more
    cp.control().account_delete(new["chap_user"])
    assert inq(IQN_1, new, user="", secret="").returncode == 0
    report = cp.api.audit()
    assert not report["ok"] and any("asks for CHAP as nobody" in p for p in report["problems"])
    cp.restart()  # reconciliation restores it
    assert cp.api.audit()["ok"], cp.api.audit()
    assert inq(IQN_1, new, user="", secret="").returncode != 0
    assert inq(IQN_1, new).returncode == 0
    patterns.check(read_lun(cp, new, IQN_1, "d"), "d", [MiB])


def test_fence_and_remove_take_the_account_out_of_tgtd(cp: ChapPlane) -> None:
    cp.api.host_add("h1", IQN_1)
    cp.api.host_add("h2", IQN_2)
    cp.api.vvol_create("pool", "8M", name="d")
    cp.api.vvol_create("pool", "8M", name="e")
    h1 = cp.api.bind_one("d", "h1", pe="iscsi1")
    h2 = cp.api.bind_one("e", "h2", pe="iscsi1")
    assert inq(IQN_1, h1).returncode == 0
    cp.api.host_fence("h1")
    assert inq(IQN_1, h1).returncode != 0
    tgt = cp.control()
    assert h1["chap_user"] not in tgt.accounts()
    assert h1["target"] not in {t.iqn for t in tgt.show()}
    assert inq(IQN_2, h2).returncode == 0  # the other host keeps its access
    cp.api.host_unfence("h1")
    again = cp.api.bind_one("d", "h1", pe="iscsi1")
    assert again["chap_user"] != h1["chap_user"]  # unfencing gives a new account
    assert inq(IQN_1, h1).returncode != 0 and inq(IQN_1, again).returncode == 0
    cp.api.unbind(["e"], "h2")
    cp.api.host_remove("h2")
    assert h2["chap_user"] not in cp.control().accounts()
    assert sorted(cp.control().accounts()) == [again["chap_user"]]
    assert cp.api.audit()["ok"], cp.api.audit()


def test_a_host_token_sees_only_its_own_chap_secret(tmp_path: str, patterns: Patterns) -> None:
    with tls_lab(tmp_path, patterns) as lab:
        lab.admin.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
        a, b = lab.as_host("ha"), lab.as_host("hb")
        try:
            ha = a.bind_one("va", "ha", pe="iscsi1")
            hb = b.bind_one("vb", "hb", pe="iscsi1")
            assert ha["chap_secret"] and hb["chap_secret"] and ha["chap_user"] != hb["chap_user"]
            assert [h["chap_secret"] for h in a.bindings()] == [ha["chap_secret"]]
            # everything hb may read: its own bindings (asking for ha's gives its own)
            seen = [b.bindings(), b.bindings(host="ha"), b.host("hb")]
            for call in (lambda: b.host("ha"), b.hosts, lambda: b.events(limit=1000)):
                try:
                    seen.append(call())
                except VvhostError as exc:  # refused to a host: nothing shown
                    seen.append(exc.message)
            shown = json.dumps(seen)
            assert ha["chap_secret"] not in shown and ha["chap_user"] not in shown
            assert hb["chap_secret"] in shown  # its own, in its own handles
            # ha's handle works for ha's initiator; hb's account does not open it
            assert inq("iqn.2026-11.test:ha", ha).returncode == 0
            assert inq("iqn.2026-11.test:hb", ha).returncode != 0
            stolen = {"user": hb["chap_user"], "secret": hb["chap_secret"]}
            assert inq("iqn.2026-11.test:ha", ha, **stolen).returncode != 0
            a.unbind(["va"], "ha")
            b.unbind(["vb"], "hb")
        finally:
            a.close()
            b.close()
