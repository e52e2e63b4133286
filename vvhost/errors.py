"""Error classes shared by the service, the HTTP API, the client and the CLI.

Every error carries its fields and renders a one-line message from a template.
The ``code`` travels over the wire (JSON ``{"code", "message", "fields"}``),
``status`` is the HTTP status and ``exit_code`` the CLI exit status class:

    1 internal   2 bad input   3 not found   4 conflict/in use/busy
    5 capacity   6 backend     7 cannot reach the control plane
"""

from __future__ import annotations

from typing import Any


class VvhostError(Exception):
    code = "internal"
    status = 500
    exit_code = 1
    template = "{detail}"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        try:
            message = self.template.format(**fields)
        except (KeyError, IndexError):
            message = f"{self.code}: {fields}"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "fields": _jsonable(self.fields)}


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        out[key] = (
            value if isinstance(value, (str, int, float, bool, list, type(None))) else str(value)
        )
    return out


class InternalError(VvhostError):
    pass


class InvalidInput(VvhostError):
    code = "invalid-input"
    status = 400
    exit_code = 2


class NotFound(VvhostError):
    code = "not-found"
    status = 404
    exit_code = 3
    template = "{kind} {ref!r} not found"


class AlreadyExists(VvhostError):
    code = "already-exists"
    status = 409
    exit_code = 4
    template = "{kind} {ref!r} already exists"


class InUse(VvhostError):
    code = "in-use"
    status = 409
    exit_code = 4
    template = "{kind} {ref!r} is in use: {reason}"


class HasDependants(VvhostError):
    code = "has-dependants"
    status = 409
    exit_code = 4
    template = "{kind} {ref!r} still has {what}: {names}; delete those first"


class Busy(VvhostError):
    code = "busy"
    status = 409
    exit_code = 4
    template = "vvol {ref!r} is {state} (operation {op}); try again when it is ready"


class VmBusy(Busy):
    """Another command holds the VM's lease (one VM operation at a time)."""

    code = "vm-busy"
    template = "busy: {op} since {since} on {host}"


class LeaseLost(VvhostError):
    code = "lease-lost"
    status = 409
    exit_code = 4
    template = "the lease on VM config {ref!r} was lost: {reason}"


class StaleGeneration(VvhostError):
    code = "stale-generation"
    status = 409
    exit_code = 4
    template = "vvol {ref!r} changed: expected generation {expected}, it is at {actual}"


class ReadOnly(VvhostError):
    code = "read-only"
    status = 409
    exit_code = 4
    template = "vvol {ref!r} is a read-only snapshot: cannot {action}"


class CapacityExceeded(VvhostError):
    code = "capacity-exceeded"
    status = 507
    exit_code = 5
    template = (
        "container {container!r} has {free} bytes free of {capacity}; {needed} bytes are needed"
    )


class BackendError(VvhostError):
    code = "backend-error"
    status = 502
    exit_code = 6
    template = "array {array!r}: {detail}"


class Unreachable(VvhostError):
    code = "unreachable"
    status = 503
    exit_code = 7
    template = "cannot reach the control plane at {address}: {detail}"


class Unauthorized(VvhostError):
    code = "unauthorized"
    status = 401
    exit_code = 7
    template = "{detail}"


class Forbidden(VvhostError):
    code = "forbidden"
    status = 403
    exit_code = 4
    template = "{detail}"


class EndpointError(VvhostError):
    """An endpoint daemon (tgtd, qemu-storage-daemon) or its tool failed."""

    code = "endpoint-error"
    status = 502
    exit_code = 6
    template = "{tool}: {detail}"


class ArrayOffline(BackendError):
    """The array's directory is not the array vvhost added (unmounted, replaced)."""

    code = "array-offline"
    status = 503
    template = "array {array!r} is offline: {reason}; nothing is done there until it is back"


class DataMissing(VvhostError):
    code = "data-missing"
    status = 502
    exit_code = 6
    template = "vvol {ref!r} has no data on array {array!r}: {path} is missing"


class VvolFailed(VvhostError):
    code = "vvol-failed"
    status = 409
    exit_code = 4
    template = "vvol {ref!r} is failed: {reason}"


class PathConflict(VvhostError):
    """An array path that overlaps something vvhost must keep apart."""

    code = "path-conflict"
    status = 409
    exit_code = 4
    template = "array path {path!r} {reason}"


ERRORS_BY_CODE: dict[str, type[VvhostError]] = {
    cls.code: cls
    for cls in (
        InternalError,
        InvalidInput,
        NotFound,
        AlreadyExists,
        InUse,
        HasDependants,
        Busy,
        VmBusy,
        LeaseLost,
        StaleGeneration,
        ReadOnly,
        CapacityExceeded,
        BackendError,
        EndpointError,
        Unreachable,
        Unauthorized,
        Forbidden,
        ArrayOffline,
        DataMissing,
        VvolFailed,
        PathConflict,
    )
}


def from_wire(payload: dict[str, Any], status: int) -> VvhostError:
    """Rebuild the error a server sent, keeping its message verbatim."""
    cls = ERRORS_BY_CODE.get(str(payload.get("code")), InternalError)
    err = cls.__new__(cls)
    err.fields = dict(payload.get("fields") or {})
    Exception.__init__(err, str(payload.get("message") or f"HTTP {status}"))
    return err


class Conflict(VvhostError):
    """A request collides with what the catalog already holds (a reused operation id)."""

    code = "conflict"
    status = 409
    exit_code = 4
    template = "{detail}"


class Corrupt(VvhostError):
    """Stored data that vvhost wrote cannot be read back in the shape it expects."""

    code = "corrupt"
    status = 422
    exit_code = 6
    template = "{kind} {ref!r} is corrupt: {detail}"


ERRORS_BY_CODE.update({cls.code: cls for cls in (Conflict, Corrupt)})


class CephError(BackendError):
    """A Ceph cluster refused or failed a request (librados/librbd, never CLI output)."""

    code = "ceph-error"
    template = "ceph cluster {cluster}: {detail}"


class CephUnreachable(CephError):
    """No monitor of the cluster answered within the client's timeouts."""

    code = "ceph-unreachable"
    status = 503
    template = "cannot reach the ceph cluster {cluster}: {detail}"


class CephDenied(CephError):
    """The cluster refused the client's key or capabilities."""

    code = "ceph-denied"
    status = 403
    template = "ceph cluster {cluster} refused {user}: {detail}"


ERRORS_BY_CODE.update({cls.code: cls for cls in (CephError, CephUnreachable, CephDenied)})


class ReserveReached(CapacityExceeded):
    """A snapshot or clone would eat into the room kept for guests' own writes."""

    code = "reserve-reached"
    template = (
        "container {container!r} keeps {reserve} bytes free for guests' writes: "
        "a {action} needing {needed} bytes would leave {left} of {capacity} free"
    )


ERRORS_BY_CODE.update({cls.code: cls for cls in (ReserveReached,)})


class CatalogUnreachable(VvhostError):
    """The catalog database (SQLite file or PostgreSQL server) cannot be opened."""

    code = "catalog-unreachable"
    status = 503
    exit_code = 7
    template = "cannot open the catalog {url}: {detail}"


ERRORS_BY_CODE.update({cls.code: cls for cls in (CatalogUnreachable,)})


class ReplicaUnavailable(VvhostError):
    """A control-plane replica refuses a request before starting it (shutting down, or
    no longer holding its lease): a client with several URLs sends it to the next."""

    code = "replica-unavailable"
    status = 503
    exit_code = 7
    template = "replica {replica} does not take requests now: {detail}"


ERRORS_BY_CODE.update({cls.code: cls for cls in (ReplicaUnavailable,)})


class ReplicaFenced(VvhostError):
    """This control-plane replica lost its lease (it was paused or cut off long
    enough for another replica to take over its operations): it writes nothing
    more; clients go to another replica."""

    code = "replica-fenced"
    status = 503
    exit_code = 7
    template = "control plane replica {replica} lost its lease and no longer serves: {detail}"


ERRORS_BY_CODE.update({cls.code: cls for cls in (ReplicaFenced,)})
