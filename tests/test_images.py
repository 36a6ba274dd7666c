"""Sandbox image tags: a hash of every build input, so an image is rebuilt exactly when one changes.

Building an image is tested in the Docker tier (``nanoenv sandbox build`` in CI, and the docker
tests that run in it); here, what decides whether a build is needed.
"""

from __future__ import annotations

from nanoenv.sandbox import images


def test_the_tag_is_stable_and_moves_with_every_input():
    plan = images.plan_image()
    assert plan.tag == images.plan_image().tag  # the same inputs, the same tag
    assert plan.tag.startswith(f"{images.IMAGE_REPO}:cpu-")
    others = {
        images.plan_image(gpu=True).tag,
        images.plan_image(torch="torch==2.4.0").tag,
        images.plan_image(base_image="debian:bookworm-slim").tag,
        images.plan_image(pip_args=("--index-url", "https://example.invalid/simple")).tag,
    }
    assert plan.tag not in others and len(others) == 4


def test_the_image_pins_the_hosts_versions():
    """The sandbox runs the torch the host runs (a baseline time is only paired on the same one)."""
    from importlib import metadata

    reqs = images.host_requirements()
    assert reqs[0] == f"torch=={metadata.version('torch').split('+')[0]}"  # 2.13.0+cpu pins 2.13.0
    assert any(r.startswith("numpy==") for r in reqs) and any(
        r.startswith("safetensors==") for r in reqs
    )


def test_the_offline_base_is_named_by_its_bootstrap_script():
    assert images.default_base_tag().startswith(f"{images.BASE_REPO}:bookworm-")
