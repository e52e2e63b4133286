"""Answers about arrays, containers, protocol endpoints, hosts, tenants and tokens."""

from __future__ import annotations

from typing import Any

from .common import Out, Strict


class ArrayOut(Out):
    id: str
    name: str
    backend: str
    settings: dict[str, Any]
    capabilities: dict[str, bool]
    created: float
    state: str
    reason: str | None = None
    fs_id: str | None = None
    where: str | None = None
    path: str | None = None


class ArrayDetail(ArrayOut):
    containers: list[str]
    snapshot_method: str | None = None
    free: int | None = None


class ReapOut(Strict):
    array: str
    purged: Any


class SpaceOut(Out):
    capacity: int
    provisioned: int
    allocated: int
    used: int
    free: int
    limit: int
    vvols: int
    fraction: float | None = None


class ContainerOut(Out):
    id: str
    name: str
    capacity: int
    provisioned: int
    tenant: str | None = None
    arrays: list[str]
    created: float
    overcommit: float
    reserve: int
    reserve_spec: str | None = None
    alerts: list[float]
    free: int
    limit: int


class ContainerDetail(ContainerOut):
    array_names: list[str]
    space: SpaceOut
    vvols: int
    allocated: int
    used: int


class PeOut(Out):
    id: str
    name: str
    protocol: str
    array: str | None = None
    portal: str | None = None
    path: str | None = None
    config: dict[str, Any]
    created: float
    bindings: int
    alive: bool
    restarts: int
    error: str | None = None
    pid: int | None = None
    node: str | None = None  # the node whose replica runs it
    node_state: str | None = None  # live | node-gone (no live replica on that node)


class HostOut(Out):
    name: str
    iqn: str | None = None
    created: float
    tenant: str | None = None
    fenced: float | None = None
    last_contact: float | None = None
    state: str | None = None


class HostDetail(HostOut):
    bindings: int


class HostCreated(HostOut):
    token: str


class TokenOut(Strict):
    """A secret, shown this once."""

    name: str
    token: str


class TokenInfo(Strict):
    name: str
    created: float
    last_used: float | None = None


class TokenRevoked(Strict):
    name: str
    revoked: bool
    admin_tokens_left: int


class TenantOut(Out):
    name: str
    created: float


class NbdCredentials(Strict):
    """What a host's NBD client presents and checks (PEM texts)."""

    host: str
    identity: str
    ca_cert: str
    client_cert: str
    client_key: str


class FenceOut(Strict):
    """What ``host fence`` cut."""

    name: str
    fenced: float | None
    bindings: int
    leases_released: list[str]
    blocklisted: list[str]


class UnfenceOut(Strict):
    name: str
    fenced: float | None
    bindings_dropped: int


class RecoverCheckOut(Strict):
    """The VM may start on ``host``: nobody unfenced uses its vvols."""

    host: str
    vvols: int
    fenced_hosts: list[str]
