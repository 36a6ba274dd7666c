"""Sandbox images: named by a hash of their build inputs, built offline, rebuilt only on change.

A CPU and a GPU image come from the same ``sandbox/Dockerfile``; they differ in the torch
wheel (a CPU build, or a CUDA build whose driver the host provides). Wheels are downloaded on
the host (containers may not reach PyPI) into a temporary build context. The base image is
either a registry image the user names, or one made here from Debian packages
(``sandbox/bootstrap-base.sh``: debootstrap, then an import through the Docker API).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from nanoenv.errors import SandboxError
from nanoenv.tasks import resource_dir

log = logging.getLogger(__name__)

IMAGE_REPO = "nanoenv-sandbox"
BASE_REPO = "nanoenv-base"
# The sandbox/ files the image is built from (with the wheels and requirements made here).
CONTEXT_FILES = ("Dockerfile", "check-compilers.sh")
PYTHON_VERSION = "3.11"  # Debian bookworm's python3
# Where the wheels must run: CPython 3.11 on glibc x86_64 (pip downloads for this, not the host).
_WHEEL_TARGET = [
    "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
    "--abi", "cp311", "--abi", "abi3", "--abi", "none",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64", "--platform", "any",
]  # fmt: skip


def _sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()


def default_base_tag() -> str:
    """The tag of the offline-bootstrapped base: changes when the bootstrap script changes."""
    script = (resource_dir("sandbox") / "bootstrap-base.sh").read_bytes()
    return f"{BASE_REPO}:bookworm-{_sha(script)[:12]}"


def _version(dist: str) -> str:
    return metadata.version(dist).split("+")[0]


def host_requirements() -> list[str]:
    """Pins that match the host's torch, numpy and safetensors, so both sandboxes agree."""
    return [
        f"torch=={_version('torch')}",
        f"numpy=={_version('numpy')}",
        f"safetensors=={_version('safetensors')}",
    ]


@dataclass(frozen=True)
class ImagePlan:
    """What an image is built from; its tag is a hash of all of it."""

    flavor: str
    base_image: str
    requirements: tuple[str, ...]
    pip_args: tuple[str, ...] = field(default=())

    @property
    def inputs_hash(self) -> str:
        files = [(resource_dir("sandbox") / n).read_bytes() for n in CONTEXT_FILES]
        return _sha(*files, self.flavor, self.base_image, *self.requirements, "--", *self.pip_args)

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.flavor}-{self.inputs_hash[:12]}"


def plan_image(
    *,
    gpu: bool = False,
    base_image: str | None = None,
    torch: str | None = None,
    pip_args: tuple[str, ...] = (),
) -> ImagePlan:
    """The image for this host: CPU or GPU flavour, host-matched pins unless told otherwise.

    Args:
        gpu: Build the GPU flavour (a CUDA build of torch; pass its index with ``pip_args``,
            e.g. ``("--index-url", "https://download.pytorch.org/whl/cu128")``).
        base_image: A registry image with python3 and venv; default: the offline bootstrap.
        torch: The torch requirement (default: the host's torch version).
        pip_args: Extra arguments for ``pip download`` (an index, a proxy).
    """
    reqs = host_requirements()
    if torch:
        reqs[0] = torch
    return ImagePlan(
        flavor="gpu" if gpu else "cpu",
        base_image=base_image or default_base_tag(),
        requirements=tuple(reqs),
        pip_args=tuple(pip_args),
    )


def image_exists(client: Any, tag: str) -> bool:
    """True when the Docker engine has an image with this tag."""
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


class _Tee:
    """Write build output to the terminal and a log file at once."""

    def __init__(self, out: IO[str] | None, log_file: IO[str]) -> None:
        self.out, self.log_file = out, log_file

    def write(self, text: str) -> None:
        for stream in (self.out, self.log_file):
            if stream is not None:
                stream.write(text)
                stream.flush()


def _run_streaming(cmd: list[str], tee: _Tee, what: str, env: dict[str, str] | None = None) -> None:
    tee.write(f"$ {' '.join(cmd)}\n")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        tee.write(line)
    if proc.wait() != 0:
        raise SandboxError(f"{what} failed (exit {proc.returncode}); see the build log")


def bootstrap_base(client: Any, tag: str, tee: _Tee) -> None:
    """Make the base image from Debian packages (needs root and debootstrap) and import it."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise SandboxError(
            f"base image {tag} is missing and cannot be bootstrapped here (needs root and "
            "debootstrap: apt-get install debootstrap). Where a registry is reachable, use "
            "`nanoenv sandbox build --base-image python:3.11-slim-bookworm` instead."
        )
    script = resource_dir("sandbox") / "bootstrap-base.sh"
    with tempfile.TemporaryDirectory(prefix="nanoenv-rootfs-") as tmp:
        root, tar = Path(tmp) / "rootfs", Path(tmp) / "rootfs.tar"
        _run_streaming(["sh", str(script), str(root)], tee, "debootstrap")
        _run_streaming(["tar", "-C", str(root), "-cf", str(tar), "."], tee, "packing the root fs")
        repo, _, version = tag.partition(":")
        tee.write(f"importing {tar} as {tag}\n")
        client.api.import_image_from_file(str(tar), repository=repo, tag=version)


def _download_wheels(plan: ImagePlan, dest: Path, tee: _Tee) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(dest),
           *_WHEEL_TARGET, *plan.pip_args, *plan.requirements]  # fmt: skip
    env = dict(os.environ)
    if plan.flavor == "gpu":
        # Only index wheels: a CPU build lying in a configured find-links folder must not win.
        env["PIP_FIND_LINKS"] = ""
    _run_streaming(cmd, tee, "downloading wheels", env=env)


def build_image(
    plan: ImagePlan,
    client: Any,
    *,
    out: IO[str] | None = sys.stdout,
    log_path: Path,
    force: bool = False,
) -> str:
    """Build the image of ``plan`` unless an image with its tag exists; return the tag.

    Output streams to ``out`` and to ``log_path``.

    Raises:
        SandboxError: naming the step that failed and the log to read.
    """
    if not force and image_exists(client, plan.tag):
        if out is not None:
            out.write(f"{plan.tag} is up to date (its build inputs have not changed)\n")
        return plan.tag
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log_file:
        tee = _Tee(out, log_file)
        try:
            _build(plan, client, tee)
        except SandboxError as e:
            raise SandboxError(f"{e} (build log: {log_path})") from None
    return plan.tag


def _build(plan: ImagePlan, client: Any, tee: _Tee) -> None:
    import docker.errors

    if not image_exists(client, plan.base_image):
        if plan.base_image.startswith(f"{BASE_REPO}:"):
            tee.write(f"bootstrapping the base image {plan.base_image} from Debian packages\n")
            bootstrap_base(client, plan.base_image, tee)
        else:
            tee.write(f"pulling {plan.base_image}\n")
            try:
                client.images.pull(plan.base_image)
            except docker.errors.APIError as e:
                raise SandboxError(f"cannot pull the base image {plan.base_image}: {e}") from None
    with tempfile.TemporaryDirectory(prefix="nanoenv-build-") as tmp:
        ctx = Path(tmp)
        for name in CONTEXT_FILES:
            shutil.copy(resource_dir("sandbox") / name, ctx / name)
        (ctx / "requirements.txt").write_text("\n".join(plan.requirements) + "\n")
        _download_wheels(plan, ctx / "wheels", tee)
        tee.write(f"building {plan.tag} from {plan.base_image}\n")
        stream = client.api.build(
            path=str(ctx),
            tag=plan.tag,
            buildargs={"BASE_IMAGE": plan.base_image},
            labels={"nanoenv": "1", "nanoenv.inputs": plan.inputs_hash},
            rm=True,
            forcerm=True,
            decode=True,
        )
        try:
            for chunk in stream:
                if "stream" in chunk:
                    tee.write(chunk["stream"])
                if "error" in chunk:
                    raise SandboxError(f"docker build failed: {chunk['error'].strip()}")
        finally:
            # The install stage (wheels and all) is left untagged; it is ours to remove.
            client.images.prune(filters={"dangling": True, "label": "nanoenv.stage=install"})
