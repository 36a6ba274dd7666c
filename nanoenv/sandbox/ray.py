"""The Ray sandbox: each Job runs as a Ray task on a node that has the resources it asks for.

Ray is the distributed engine here; nothing home-made schedules work across machines. The task
asks Ray for the job's CPUs and GPUs (``num_cpus``, ``num_gpus``), so jobs wait for a node with
room, and it runs the job in that node's own local or docker sandbox. Nothing is assumed about
shared disks: the job's small inputs (its files, the verifier's inputs) travel with the task,
its outputs come back as a tar, and the data is found on the node by dataset name and checked
against the manifest hash the driver expects (prepared there when the task allows it).
Output lines stream back to the driver as they arrive, through a Ray queue.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from nanoenv.sandbox.base import CANCELLED, Capabilities, LineCallback, extract_tar, job_gpu_count
from nanoenv.types import Job, JobResult, StampedLine

log = logging.getLogger(__name__)

_DONE = "__nanoenv_done__"


def _pack(folder: Path | None) -> bytes | None:
    """A folder's regular files as tar bytes (links and specials are not followed)."""
    if folder is None or not folder.is_dir():
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buf.getvalue()


def _unpack(data: bytes, dest: Path, max_bytes: int, max_files: int) -> list[str]:
    with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
        tmp.write(data)
        tmp.flush()
        return extract_tar(Path(tmp.name), dest, max_bytes, max_files)


def _dataset_on_node(data_dir: Path, manifest_hash: str | None) -> tuple[Path, str]:
    """This node's copy of the dataset whose public folder the driver named."""
    from nanoenv.data import dataset_root, prepare, verify_dataset

    name = data_dir.parent.name
    root = dataset_root(name)
    if not (root / "manifest.json").exists():
        prepare(name)  # the built-in small datasets; FineWeb must be fetched on the node first
    manifest = verify_dataset(root, manifest_hash, full=False)
    return root, manifest.dataset


def run_on_node(
    job: Job, inputs: bytes | None, manifest_hash: str | None, inner: str, queue: Any, key: str
) -> tuple[JobResult, bytes | None]:
    """The Ray task: rebuild the job for this node, run it in its sandbox, send lines back."""
    import ray

    from nanoenv.sandbox import make_sandbox

    with tempfile.TemporaryDirectory(prefix="nanoenv-ray-") as tmp:
        work = Path(tmp)
        update: dict[str, Any] = {"out_dir": work / "out"}
        if job.data_dir is not None:
            root, _ = _dataset_on_node(job.data_dir, manifest_hash)
            update["data_dir"] = root / "public"
            update["masked"] = [root / "hidden"]
        if inputs is not None:
            _unpack(inputs, work / "in", 1 << 40, 1 << 20)
            update["input_dir"] = work / "in"
        if job_gpu_count(job):
            update["gpus"] = [int(i) for i in ray.get_gpu_ids()]  # Ray chose them
        node_job = job.model_copy(update=update)
        batch: list[StampedLine] = []

        def on_line(line: StampedLine) -> None:
            batch.append(line)
            if len(batch) >= 16 or line.text.startswith("step:"):
                queue.put((key, list(batch)))
                batch.clear()

        result = make_sandbox(inner).run(node_job, on_line)
        if batch:
            queue.put((key, list(batch)))
        queue.put((key, _DONE))
        return result, _pack(work / "out")


class RaySandbox:
    """Run jobs as Ray tasks (see the module docstring).

    Args:
        address: A Ray cluster to join (``"auto"``, ``"ray://host:10001"``); default: the one
            ``ray.init`` finds or starts locally.
        inner: The sandbox each node runs the job in: ``"local"`` or ``"docker"``.
        init_kwargs: Passed to ``ray.init`` when nanoenv starts Ray itself.
    """

    name = "ray"
    capabilities = Capabilities(
        schedules_resources=True,
        default_in_flight=4,
        summary="jobs placed by a Ray cluster's scheduler, run in a local or docker sandbox there",
    )

    def __init__(
        self, address: str | None = None, inner: str = "local", **init_kwargs: Any
    ) -> None:
        self.address = address
        self.inner = inner
        self.init_kwargs = init_kwargs
        self._remote: Any = None
        self._running: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._line_relay: _LineRelay | None = None

    def _ensure(self) -> Any:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=self.address,
                ignore_reinit_error=True,
                log_to_driver=False,
                **self.init_kwargs,
            )
        if self._remote is None:
            self._remote = ray.remote(run_on_node)
        return ray

    def close(self) -> None:
        """Cancel what is still running and stop the line relay's thread (Ray itself stays up
        for its other users, who may shut it down the moment this returns)."""
        for ref in list(self._running.values()):
            self._cancel(ref)
        with self._lock:
            relay = self._line_relay
        if relay is not None:
            relay.stop()

    def _cancel(self, ref: Any) -> None:
        import ray

        with contextlib.suppress(Exception):  # already finished or gone
            ray.cancel(ref, force=True)

    def run(
        self, job: Job, on_line: LineCallback | None = None, cancel: threading.Event | None = None
    ) -> JobResult:
        """Submit the job to Ray and wait for it, relaying its lines as they arrive."""
        t0 = time.monotonic()
        try:
            ray = self._ensure()
            relay = self._relay()
        except Exception as e:  # no Ray, or no cluster at that address
            return JobResult(
                infra_error=f"cannot start or reach Ray: {e}", wall_time_s=time.monotonic() - t0
            )
        key = uuid.uuid4().hex
        finished = relay.register(key, on_line)
        options: dict[str, Any] = {"num_cpus": job.limits.cpus or 1, "max_retries": 0}
        if gpus := job_gpu_count(job):
            options["num_gpus"] = gpus
        ref = self._remote.options(**options).remote(
            job,
            _pack(job.input_dir),
            _driver_manifest_hash(job.data_dir),
            self.inner,
            relay.queue,
            key,
        )
        with self._lock:
            self._running[key] = ref
        try:
            deadline = time.monotonic() + job.limits.timeout_s + 600
            while not ray.wait([ref], timeout=0.2)[0]:
                if cancel is not None and cancel.is_set():
                    self._cancel(ref)
                    return JobResult(infra_error=CANCELLED, wall_time_s=time.monotonic() - t0)
                if time.monotonic() > deadline:
                    self._cancel(ref)
                    return JobResult(
                        infra_error="the Ray task outlived its job's deadline",
                        wall_time_s=time.monotonic() - t0,
                    )
            result, out = ray.get(ref)
            finished.wait(10)  # the last lines may still be on their way
        except Exception as e:  # the worker died, the node went away
            return JobResult(
                infra_error=f"the Ray task failed: {type(e).__name__}: {e}",
                wall_time_s=time.monotonic() - t0,
            )
        finally:
            relay.unregister(key)
            with self._lock:
                self._running.pop(key, None)
        if out is not None and job.out_dir is not None:
            notes = _unpack(out, job.out_dir, job.limits.max_out_bytes, job.limits.max_out_files)
            result = result.model_copy(update={"notes": result.notes + notes})
        return result

    def _relay(self) -> _LineRelay:
        with self._lock:
            if self._line_relay is None:
                self._line_relay = _LineRelay()
            return self._line_relay


class _LineRelay:
    """One Ray queue for all of a sandbox's jobs, and a thread that hands each batch of lines
    to its job's callback (one queue actor, not one per job: actors cost a process each).

    The thread runs only while a job is registered, and ``stop`` waits for it: a Ray call made
    from a thread after ``ray.shutdown()`` ends the whole process (Ray's core worker calls
    ``_exit(1)``: "The core worker has already been shutdown"), so none may be pending once
    the jobs are done and the sandbox is closed.
    """

    POLL_S = 0.25  # the longest a queue read blocks, so the longest stop() waits for it

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=100_000, actor_options={"num_cpus": 0})
        self._jobs: dict[str, tuple[LineCallback | None, threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def register(self, key: str, on_line: LineCallback | None) -> threading.Event:
        done = threading.Event()
        with self._lock:
            self._jobs[key] = (on_line, done)
            self._stopping = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._pump, daemon=True, name="nanoenv-ray-lines"
                )
                self._thread.start()
        return done

    def unregister(self, key: str) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def stop(self) -> None:
        """Stop the thread and wait until it has made its last Ray call."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10 * self.POLL_S + 5)

    def _pump(self) -> None:
        while True:
            with self._lock:
                if self._stopping or not self._jobs:  # nothing to relay: no Ray call pending
                    self._thread = None
                    return
            try:
                key, payload = self.queue.get(timeout=self.POLL_S)
            # empty, or Ray shut down (its get raises SystemExit(0) as the driver disconnects)
            except (Exception, SystemExit):
                if not _ray_up():
                    with self._lock:
                        self._thread = None
                    return
                continue
            with self._lock:
                on_line, done = self._jobs.get(key, (None, None))
            if payload == _DONE:
                if done is not None:
                    done.set()
            elif on_line is not None:
                for line in payload:
                    on_line(line)


def _ray_up() -> bool:
    import ray

    return ray.is_initialized()


def _driver_manifest_hash(data_dir: Path | None) -> str | None:
    if data_dir is None:
        return None
    from nanoenv.data import load_manifest

    try:
        return load_manifest(data_dir.parent).content_hash()
    except Exception:
        return None
