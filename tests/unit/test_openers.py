"""Naming who has a vvol open: the monitors' entity first, the catalog's
bindings when they cannot say, the address when neither can."""

from __future__ import annotations

from vvhost.arrays.base import Opener
from vvhost.arrays.sources import FileSource, RbdSource
from vvhost.model import ACTIVE, Binding, Pe
from vvhost.service.openers import name_opener

SRC = RbdSource("p", "ns", "vv-1", user="cp")
ADDR = "127.0.0.1:0/42"


def binding(host: str, pe: str = "pe-1") -> Binding:
    return Binding(
        vvol="v1", host=host, pe=pe, secondary_id="vv-1", tid=None, readonly=False,
        shared=False, refcount=1, state=ACTIVE, op=None, created=0.0,
    )  # fmt: skip


PES = {"pe-1": Pe("pe-1", "rbd1", "rbd", "a1", None, None, {}, 0.0)}


def test_a_host_identity_names_the_host() -> None:
    o = Opener("client.4113", ADDR, "client.vvhost-kvm1")
    assert name_opener(o, SRC, [], PES, None) == f"host kvm1 (client.vvhost-kvm1 at {ADDR})"


def test_without_the_monitors_the_catalog_names_the_bound_hosts() -> None:
    o = Opener("client.4113", ADDR)
    named = name_opener(o, SRC, [binding("kvm2"), binding("kvm1")], PES, None)
    assert named == f"host kvm1, kvm2 (client.4113 at {ADDR}, by the catalog's bindings)"


def test_with_neither_the_address_is_named() -> None:
    assert name_opener(Opener("client.7", ADDR), SRC, [], PES, None) == f"client.7 at {ADDR}"


def test_the_control_planes_own_identity_and_strangers() -> None:
    own = Opener("client.9", ADDR, "client.cp")
    assert (
        name_opener(own, SRC, [], PES, None)
        == f"the control plane's own identity (client.cp at {ADDR})"
    )
    other = Opener("client.9", ADDR, "client.backup")
    assert name_opener(other, SRC, [], PES, None) == f"client.backup at {ADDR}"
    # a file has no Ceph identity: only a host identity or the address can name it
    assert name_opener(own, FileSource("/x"), [], PES, None) == f"client.cp at {ADDR}"
