"""The space model: what each vvol counts against its container, and when a
container may take more.

    container capacity C (physical), over-subscription ratio R, reserve K
    ┌────────────────────────────── C × R (provisioning limit) ─────────────┐
    │ writable vvols: logical size │ snapshots, linked clones: unique bytes │  = provisioned
    └───────────────────────────────────────────────────────────────────────┘
    ┌────────────────── C (physical) ─────────────────┬──── K ────┐
    │ writable vvols: allocated │ snapshots/linked: unique │ room for guests' writes
    └─────────────────────────────────────────────────┴───────────┘

* ``charge`` (logical): a writable vvol's size; a snapshot's or linked
  clone's unique bytes (what nothing else holds; allocated where the array
  cannot tell).
* ``held`` (physical): a vvol's allocated bytes, except that snapshots and
  linked clones count only what they do not share with the vvol they came
  from: a linked clone its unique bytes, a snapshot the bytes no newer point
  of its family (later snapshots, the live vvol) holds, where the array can
  tell (``exclusive``; else its unique bytes).  So every byte of a family is
  counted once, by its newest holder: three snapshots still sharing data the
  live vvol overwrote count it once, in the newest of them.
* Admission: every operation charges its estimate in the transaction that
  records it; provisioned may not pass C × R, and snapshots and clones may not
  take the physical free space below K.

Pure functions over numbers: the service and the catalog supply the figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import InvalidInput
from .model import CLONE, SNAPSHOT
from .units import parse_size

LEVELS = (0.8, 0.9)  # usage fractions whose crossing is reported


@dataclass(frozen=True)
class Figures:
    """A vvol's figures as its array reports them."""

    allocated: int
    unique: int | None
    exclusive: int | None = None  # snapshots: bytes no newer point holds


def thin(relation: str | None) -> bool:
    """Snapshots and linked clones count what they hold alone, not their size."""
    return relation in (SNAPSHOT, CLONE)


def own_bytes(relation: str | None, f: Figures) -> int:
    """Bytes a snapshot or linked clone holds alone (allocated where the array cannot
    tell which are shared: never less than the truth)."""
    return f.unique if f.unique is not None else f.allocated


def charge(size: int, relation: str | None, f: Figures) -> int:
    """What the vvol counts against capacity × ratio."""
    return own_bytes(relation, f) if thin(relation) else size


def held(relation: str | None, f: Figures) -> int:
    """What the vvol counts against the physical capacity."""
    if relation == SNAPSHOT and f.exclusive is not None:
        return f.exclusive
    return own_bytes(relation, f) if thin(relation) else f.allocated


def copy_estimate(instant: bool, source_allocated: int) -> int:
    """Physical bytes a new snapshot or clone takes at first: nothing where the
    array shares the source's data (reflink, RBD), the source's data elsewhere."""
    return 0 if instant else source_allocated


def limit(capacity: int, overcommit: float) -> int:
    return int(capacity * overcommit)


def parse_overcommit(value: str | float) -> float:
    try:
        ratio = float(value)
    except ValueError:
        raise InvalidInput(detail=f"over-subscription ratio {value!r} is not a number") from None
    if not 1.0 <= ratio <= 100.0:
        raise InvalidInput(detail=f"over-subscription ratio {ratio} is not between 1.0 and 100")
    return ratio


def parse_alerts(spec: str) -> tuple[float, ...]:
    """``80,90``: the usage percentages whose crossing raises an event (the highest
    is critical); one to four, rising, each 1..100."""
    try:
        levels = tuple(float(p.strip().rstrip("%")) / 100 for p in str(spec).split(","))
    except ValueError:
        raise InvalidInput(detail=f"alerts {spec!r} are not percentages like 80,90") from None
    rising = all(a < b for a, b in zip(levels, levels[1:], strict=False))
    if not 1 <= len(levels) <= 4 or not rising or not all(0.01 <= lv <= 1.0 for lv in levels):
        raise InvalidInput(detail=f"alerts {spec!r}: one to four rising percentages, 1..100")
    return levels


def alerts_text(levels: tuple[float, ...]) -> str:
    return ",".join(f"{lv * 100:g}" for lv in levels)


def parse_reserve(spec: str | int, capacity: int) -> int:
    """``5%`` of the capacity, or a size (``2G``); bytes, less than the capacity."""
    text = str(spec).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise InvalidInput(detail=f"reserve {text!r} is not a percentage") from None
        if not 0.0 <= pct < 100.0:
            raise InvalidInput(detail=f"reserve {text!r} is not between 0% and 100%")
        nbytes = int(capacity * pct / 100.0)
    else:
        nbytes = parse_size(text, what="reserve") if text not in ("0", "") else 0
    if nbytes >= capacity > 0:
        raise InvalidInput(detail=f"reserve {text!r} leaves nothing of the capacity {capacity}")
    return nbytes


@dataclass(frozen=True)
class Usage:
    """A container's settings and the sums of its vvols' figures."""

    capacity: int
    overcommit: float
    reserve: int
    provisioned: int  # sum of charges (kept by admission)
    allocated: int  # sum of allocated bytes (shared bytes counted by each holder)
    unique: int  # sum of unique bytes
    used: int  # sum of held bytes: what counts against the physical capacity
    vvols: int

    @property
    def limit(self) -> int:
        return limit(self.capacity, self.overcommit)

    @property
    def free(self) -> int:
        """Room left to provision (logical)."""
        return self.limit - self.provisioned

    @property
    def physical_free(self) -> int:
        return self.capacity - self.used

    @property
    def fraction(self) -> float:
        """How full it is: the fuller of the logical and the physical side."""
        if self.capacity <= 0:
            return 0.0
        return max(self.used / self.capacity, self.provisioned / max(self.limit, 1))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            limit=self.limit,
            free=self.free,
            physical_free=self.physical_free,
            fraction=round(self.fraction, 4),
        )
        return out


def shrink_problem(u: Usage, capacity: int, overcommit: float, reserve: int) -> str | None:
    """Why the container cannot take these settings (None: it can)."""
    if u.provisioned > limit(capacity, overcommit):
        return (
            f"{u.provisioned} bytes are provisioned, more than {capacity} x {overcommit:g} "
            f"= {limit(capacity, overcommit)}"
        )
    if u.used > capacity:
        return f"{u.used} bytes are in use, more than the capacity {capacity}"
    if reserve and capacity - u.used < reserve and reserve > u.reserve:
        return f"{u.used} bytes are in use; a reserve of {reserve} would leave no room"
    return None


def crossed(before: float, after: float, levels: tuple[float, ...] = LEVELS) -> list[float]:
    """Levels the usage fraction passed going up (rising edges only)."""
    return [lv for lv in levels if before < lv <= after]
