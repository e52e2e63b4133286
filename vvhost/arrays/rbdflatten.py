"""Clone depth: how deep an image's parent chain is, and flattening in the background.

    vv-a ── vs-1 ─▶ vv-b ── vc-c ─▶ vv-c ── ... ─▶ vv-z      depth(vv-z) = parents above it

Every layer of a chain costs reads that miss; past ``MAX_CLONE_DEPTH`` a new
clone is flattened (its data copied up from the parents) by a background
thread, while the vvol stays usable.  ``status(vvol_id)`` shows the progress:

    {"state": "running" | "done" | "failed", "done": objects, "total": objects, "error": ...}
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import rbd

from .rbdconn import Cluster
from .rbdindex import Image

MAX_CLONE_DEPTH = 8


def parent_of(image: Any) -> tuple[str, str, str] | None:
    """(namespace, image id, snapshot name) of an open image's parent, None without one."""
    try:
        spec = image.get_parent_image_spec()
        parent_id = image.parent_id()
    except rbd.ImageNotFound:
        return None
    return str(spec["pool_namespace"]), str(parent_id), str(spec["snap_name"])


def depth(cluster: Cluster, image: Image, limit: int = 64) -> int:
    """Number of parents above ``image`` (0: not a clone)."""
    count = 0
    ns, image_id = image.ns, image.image_id
    while count < limit:
        with cluster.ioctx(ns) as io, rbd.Image(io, image_id=image_id, read_only=True) as img:
            parent = parent_of(img)
        if parent is None:
            return count
        count += 1
        ns, image_id, _ = parent
    return count


@dataclass
class Job:
    state: str = "running"
    done: int = 0
    total: int = 0
    error: str | None = None


class Flattener:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    def start(self, vvol_id: str, image: Image) -> None:
        with self._lock:
            if vvol_id in self._jobs and self._jobs[vvol_id].state == "running":
                return
            job = self._jobs[vvol_id] = Job()
            thread = threading.Thread(
                target=self._run, args=(job, image), name=f"flatten-{vvol_id}", daemon=True
            )
            self._threads[vvol_id] = thread
        thread.start()

    def _run(self, job: Job, image: Image) -> None:
        def step(done: int, total: int) -> int:
            job.done, job.total = done, total
            return -1 if self._stop.is_set() else 0

        try:
            flatten(self.cluster, image, step)
            job.done = job.total  # librbd counts objects from 0
            job.state = "done"
        except Exception as exc:  # the job records any failure; the thread must not die loud
            job.state, job.error = "failed", str(exc) or type(exc).__name__

    def status(self, vvol_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(vvol_id)
            return None if job is None else asdict(job)

    def wait(self, vvol_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        with self._lock:
            thread = self._threads.get(vvol_id)
        if thread is not None:
            thread.join(timeout)
        return self.status(vvol_id)

    def close(self, timeout: float = 30.0) -> bool:
        """Ask running flattens to stop and wait for them; False if one is still running
        (its connection must then stay open)."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)


def flatten(cluster: Cluster, image: Image, progress: Any = None) -> None:
    with cluster.ioctx(image.ns) as io, rbd.Image(io, image_id=image.image_id) as img:
        if parent_of(img) is not None:
            img.flatten(on_progress=progress)
