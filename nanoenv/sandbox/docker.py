"""The Docker sandbox: one hardened, throwaway container per job, through the Docker SDK.

Each job gets a container with no network, a read-only root, a non-root user, every
capability dropped, no-new-privileges, limits on pids, memory (no swap), CPU and /dev/shm,
an init process, and labels naming its owner. All it can write is size-capped tmpfs
(``/work``, ``/tmp``); the data is bind-mounted read-only at ``/data``, the job's files at
``/job``. The container idles under ``sleep``; the job runs as an exec in it, so the harness
can read ``/work/out`` back (as a tar stream, unpacked without links or escapes) after the
job ends and before the container is removed. The deadline is kept from the host: at it the
container is killed, and it is removed in ``finally`` whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from nanoenv.errors import SandboxError
from nanoenv.liveness import owner_alive, owner_id
from nanoenv.sandbox.base import (
    CANCELLED,
    Capabilities,
    LineCallback,
    LineSplitter,
    OutputPump,
    data_links,
    extract_tar,
    job_cpus,
    job_environment,
    job_gpu_count,
    new_workspace,
    render_command,
    result_from,
    sweep_workspaces,
)
from nanoenv.types import Job, JobResult

log = logging.getLogger(__name__)

LABEL = "nanoenv"
DOCKER_WORKSPACE = "nanoenv-docker-job-"
UID = 10001
KEEPER_UID = 10002
# /work holds the job's scratch files and its out dir: the scratch room, plus all the job may
# leave in out (its max_out_bytes), so what the limits allow always fits.
WORK_TMPFS_MB = 2048
TMP_TMPFS_MB = 1024


def work_tmpfs_mb(job: Job) -> int:
    """The size of a job's /work tmpfs, in MiB."""
    return WORK_TMPFS_MB + -(-job.limits.max_out_bytes // 2**20)


_START = 'cp -R /job/. /work/ && mkdir -p /work/out && exec "$@"'


def _daemon_hint(error: Exception) -> str:
    return (
        f"cannot reach the Docker daemon ({error}). Start it (`sudo systemctl start docker`, "
        "or `sudo dockerd &`), or point DOCKER_HOST at one"
    )


def _links_script(job: Job) -> str:
    """Shell that offers the data in the records' layout too (Job.data_links), under /work."""
    links = data_links(job)
    parents = sorted({str(Path("/work", rel).parent) for rel in links})
    steps = [f"mkdir -p {' '.join(map(shlex.quote, parents))} && "] if parents else []
    for rel, shard in links.items():
        steps.append(f"ln -s /data/{shlex.quote(shard)} {shlex.quote(f'/work/{rel}')} && ")
    return "".join(steps)


def connect() -> Any:
    """A Docker client that has answered a ping, or a SandboxError that says what to do."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise SandboxError(_daemon_hint(e)) from None


def sweep(client: Any, *, everything: bool = False) -> list[str]:
    """Remove nanoenv containers left by processes that are gone (or all of them).

    Returns the names of the containers removed.
    """
    import docker.errors

    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
        if everything or not owner_alive(c.labels.get(f"{LABEL}.owner", "")):
            try:
                c.remove(force=True)
                removed.append(c.name)
            except docker.errors.NotFound:
                pass
    if removed:
        log.warning("removed %d leftover nanoenv container(s)", len(removed))
    return removed


class DockerSandbox:
    """Run jobs in hardened Docker containers (see the module docstring).

    Args:
        image: The image to run (default: this host's CPU or GPU image, by build-input hash).
        gpu: Use the GPU image and pass GPUs through (NVIDIA container toolkit on the host).
        client: A docker client (default: from the environment, on first use).
    """

    name = "docker"
    capabilities = Capabilities(
        gpu_request=True, summary="a fresh container per run (CPU or NVIDIA GPUs)"
    )

    def __init__(self, image: str | None = None, *, gpu: bool = False, client: Any = None) -> None:
        self._image = image
        self.gpu = gpu
        self._client = client
        self._swept = False
        self.owner = owner_id()
        self._host_cpus: int | None = None

    @property
    def image(self) -> str:
        """The image tag jobs run in."""
        if self._image is None:
            from nanoenv.sandbox.images import plan_image

            self._image = plan_image(gpu=self.gpu).tag
        return self._image

    def _connect(self) -> Any:
        if self._client is None:
            self._client = connect()
        if not self._swept:  # leftovers of an earlier process that crashed
            sweep(self._client)
            sweep_workspaces(DOCKER_WORKSPACE)
            self._swept = True
        return self._client

    def host_cpus(self) -> int:
        """The CPUs of the machine the daemon runs on (not necessarily this one)."""
        if self._host_cpus is None:
            self._host_cpus = int(self._connect().info().get("NCPU") or os.cpu_count() or 1)
        return self._host_cpus

    containment = (
        "docker: a throwaway container, no network, read-only root, no capabilities, non-root"
    )

    def close(self) -> None:
        """Close the client's connection."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def container_config(
        self, job: Job, job_dir: Path, job_id: str, host_cpus: int | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of ``containers.create`` for a job (inspectable without a GPU).
        ``host_cpus``: the daemon's CPUs, which cap the job's (default: this machine's)."""
        import docker.types

        lim = job.limits
        shared = {"/job": job_dir, "/data": job.data_dir, "/input": job.input_dir}
        mounts = [
            docker.types.Mount(target, str(src), type="bind", read_only=True)
            for target, src in shared.items()
            if src is not None
        ]
        config: dict[str, Any] = {
            "image": self.image,
            "command": ["sleep", "infinity"],
            "detach": True,
            # The idle main process runs as another unprivileged user, so the job (UID) cannot
            # signal it: `kill -9 -1` by the job or by the harness spares the container.
            "user": f"{KEEPER_UID}:{KEEPER_UID}",
            "working_dir": "/work",
            "hostname": "nanoenv",
            # torchrun's rendezvous resolves the host's own name; with no network there is no
            # DNS, so the name is written into /etc/hosts.
            "extra_hosts": {"nanoenv": "127.0.0.1"},
            "network_mode": "none",
            "read_only": True,
            "mounts": mounts,
            "tmpfs": {
                "/work": f"rw,exec,nosuid,nodev,size={work_tmpfs_mb(job)}m,uid={UID},gid={UID},mode=0755",
                "/tmp": f"rw,exec,nosuid,nodev,size={TMP_TMPFS_MB}m,mode=1777",
            },
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "init": True,
            "pids_limit": lim.pids or -1,
            "shm_size": f"{lim.shm_mb}m",
            "ulimits": [
                docker.types.Ulimit(name="core", soft=0, hard=0),
                docker.types.Ulimit(name="fsize", soft=lim.max_file_bytes, hard=lim.max_file_bytes),
            ],
            "log_config": docker.types.LogConfig(
                type="json-file", config={"max-size": "10m", "max-file": "1"}
            ),
            "labels": {
                LABEL: "1",
                f"{LABEL}.owner": self.owner,
                f"{LABEL}.job": job_id,
                **{f"{LABEL}.{k.removeprefix('nanoenv.')}": v for k, v in job.labels.items()},
            },
        }
        if lim.memory_mb:
            config["mem_limit"] = f"{lim.memory_mb}m"
            config["memswap_limit"] = f"{lim.memory_mb}m"  # equal: no swap
        if lim.cpus:  # Docker refuses more CPUs than the host has: the job gets them all
            config["nano_cpus"] = int(job_cpus(job, host_cpus) * 1e9)
        if job_gpu_count(job):
            ids = [str(i) for i in job.gpus] if isinstance(job.gpus, list) else None
            config["device_requests"] = [
                docker.types.DeviceRequest(
                    driver="nvidia",
                    count=None if ids else int(job.gpus),  # type: ignore[arg-type]
                    device_ids=ids,
                    capabilities=[["gpu"]],
                )
            ]
        return config

    def exec_env(self, job: Job, host_cpus: int | None = None) -> dict[str, str]:
        """The job's environment inside the container."""
        return job_environment(
            job, home="/work", tmp="/tmp", out_dir="/work/out", data_dir="/data",
            input_dir="/input", host_cpus=host_cpus,
        )  # fmt: skip

    def run(
        self, job: Job, on_line: LineCallback | None = None, cancel: threading.Event | None = None
    ) -> JobResult:
        """Run ``job`` in a fresh container; the container is removed whatever happens."""
        import docker.errors

        t0 = time.monotonic()
        job_id = uuid.uuid4().hex[:12]
        job_dir = new_workspace(DOCKER_WORKSPACE)
        container = None
        try:
            client = self._connect()
            for name, text in job.files.items():
                if "/" in name or name.startswith(".."):
                    raise ValueError(f"job file names must be plain names, got {name!r}")
                (job_dir / name).write_text(text, encoding="utf-8")
                (job_dir / name).chmod(0o644)
            job_dir.chmod(0o755)
            try:
                config = self.container_config(job, job_dir, job_id, self.host_cpus())
                container = client.containers.create(**config)
            except docker.errors.ImageNotFound:
                return _infra(
                    t0,
                    f"the sandbox image {self.image} is missing: run `nanoenv sandbox build"
                    f"{' --gpu' if self.gpu else ''}`",
                )
            container.start()
            result = self._exec_job(client, container, job, on_line, t0, cancel)
            if cancel is not None and cancel.is_set():
                result = result.model_copy(update={"infra_error": CANCELLED})
            return result
        except SandboxError as e:
            return _infra(t0, str(e))
        except docker.errors.DockerException as e:
            log.exception("docker sandbox failed")
            return _infra(t0, f"the Docker engine failed: {e}")
        except OSError as e:
            return _infra(t0, f"the docker sandbox could not prepare the job: {e}")
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except docker.errors.DockerException:
                    log.warning(
                        "could not remove container %s; `nanoenv sandbox clean` will",
                        container.name,
                    )
            shutil.rmtree(job_dir, ignore_errors=True)

    def _exec_job(
        self,
        client: Any,
        container: Any,
        job: Job,
        on_line: LineCallback | None,
        t0: float,
        cancel: threading.Event | None = None,
    ) -> JobResult:
        api = client.api
        cmd = render_command(job.command, python="python3", gpus=job_gpu_count(job))
        exec_id = api.exec_create(
            container.id, ["sh", "-c", _links_script(job) + _START, "nanoenv-job", *cmd],
            environment=self.exec_env(job, self.host_cpus()), workdir="/work",
            user=f"{UID}:{UID}",
        )["Id"]  # fmt: skip
        t0 = time.monotonic()
        pump = OutputPump(
            t0, job.limits.max_output_bytes, on_line, lambda: _kill(container),
            # the end line stops the job's processes, not the container: the out dir is read next
            end_line=job.end_line, on_end=lambda: _kill_job_processes(api, container),
        )  # fmt: skip
        splitters = {"stdout": LineSplitter(pump, "stdout"), "stderr": LineSplitter(pump, "stderr")}

        def read() -> None:
            for out, err in api.exec_start(exec_id, stream=True, demux=True):
                if out:
                    splitters["stdout"].feed(out)
                if err:
                    splitters["stderr"].feed(err)
            for s in splitters.values():
                s.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + job.limits.timeout_s
        while reader.is_alive() and time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                _kill(container)
                break
            reader.join(0.2)
        timed_out = reader.is_alive() and not (cancel is not None and cancel.is_set())
        if timed_out:
            _kill(container)
            reader.join(10)
        pump.stopped()  # a kill the output asked for is over before the container is read
        info = api.exec_inspect(exec_id)
        exit_code = None if info.get("Running") else info.get("ExitCode")
        notes: list[str] = []
        exit_s = None
        if pump.truncated:
            notes.append(f"output passed {job.limits.max_output_bytes:,} bytes: job killed")
        if not timed_out and not pump.truncated and job.out_dir is not None:
            # Nothing the job left running may touch the out dir while it is read.
            _kill_job_processes(api, container)
            exit_s = time.monotonic() - t0  # the exec ended and nothing it started is left
            notes += self._copy_out(api, container, job)
        telemetry = _usage(api, container)
        pump.join()  # every line delivered before the result is
        container.reload()
        state = container.attrs.get("State", {})
        oom = bool(state.get("OOMKilled")) or (
            exit_code == 137 and not timed_out and not pump.truncated
        )
        return result_from(
            pump, exit_code, t0, timed_out=timed_out, oom=oom, notes=notes, telemetry=telemetry,
            exit_s=exit_s,
        )  # fmt: skip

    def _copy_out(self, api: Any, container: Any, job: Job) -> list[str]:
        """Stream /work/out out of the container as a tar, and unpack it safely."""
        assert job.out_dir is not None
        exec_id = api.exec_create(
            container.id, ["tar", "-C", "/work/out", "-cf", "-", "."], user=f"{UID}:{UID}"
        )["Id"]
        cap = job.limits.max_out_bytes
        with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
            size = 0
            for out, _err in api.exec_start(exec_id, stream=True, demux=True):
                if out:
                    size += len(out)
                    if size > cap:
                        return [f"the out dir is over {cap:,} bytes: not copied"]
                    tmp.write(out)
            tmp.flush()
            if size == 0:
                return ["the out dir could not be read"]
            return extract_tar(Path(tmp.name), job.out_dir, cap, job.limits.max_out_files)


# The container's own cgroup counters, read from inside it (read-only there: the job cannot
# write them): cgroup v2's cpu.stat and memory.peak, else v1's cpuacct and memory files.
_CGROUP_USAGE = r"""
cg=/sys/fs/cgroup
if [ -r $cg/cpu.stat ]; then
    while read -r key value; do [ "$key" = usage_usec ] && cpu_ns=${value}000; done < $cg/cpu.stat
    peak=$(cat $cg/memory.peak 2>/dev/null || cat $cg/memory.current 2>/dev/null)
else
    cpu_ns=$(cat $cg/cpuacct/cpuacct.usage 2>/dev/null)
    peak=$(cat $cg/memory/memory.max_usage_in_bytes 2>/dev/null)
fi
echo "nanoenv-usage ${cpu_ns:-0} ${peak:-0}"
"""


def _usage(api: Any, container: Any) -> dict[str, float]:
    """CPU time and peak memory of the container: its cgroup's counters, read by an exec in
    it (milliseconds), else the engine's statistics (which wait a second for a sample)."""
    import docker.errors

    with contextlib.suppress(docker.errors.DockerException, ValueError, IndexError):
        exec_id = api.exec_create(container.id, ["sh", "-c", _CGROUP_USAGE], user=f"{UID}:{UID}")
        out = api.exec_start(exec_id["Id"]).decode("utf-8", "replace").split()
        _, cpu_ns, peak = out[out.index("nanoenv-usage") :][:3]
        if int(cpu_ns) > 0:
            return {"cpu_time_s": int(cpu_ns) / 1e9, "peak_rss_mb": int(peak) / 2**20}
    return _engine_usage(container)


def _engine_usage(container: Any) -> dict[str, float]:
    """CPU time and peak memory of the container, from the engine's cgroup statistics."""
    import docker.errors

    try:
        stats = container.stats(stream=False)
    except docker.errors.DockerException:
        return {}
    out: dict[str, float] = {}
    cpu = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
    if cpu:
        out["cpu_time_s"] = cpu / 1e9
    mem = stats.get("memory_stats", {})
    peak = mem.get("max_usage") or mem.get("usage")  # cgroup v2 reports no max_usage
    if peak:
        out["peak_rss_mb"] = peak / 2**20
    return out


def _kill_job_processes(api: Any, container: Any) -> None:
    """SIGKILL every process the job's user runs in the container (the container stays up)."""
    kill = api.exec_create(container.id, ["sh", "-c", "kill -9 -1; true"], user=f"{UID}:{UID}")
    api.exec_start(kill["Id"])


def _kill(container: Any) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.DockerException):  # already gone
        container.kill()


def _infra(t0: float, message: str) -> JobResult:
    return JobResult(infra_error=message, wall_time_s=round(time.monotonic() - t0, 4))
