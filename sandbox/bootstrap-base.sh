#!/bin/sh
# Make a Debian bookworm root filesystem with Python 3.11, for `docker import`, from Debian
# packages alone: for machines that reach a Debian mirror but no image registry.
# Usage: bootstrap-base.sh ROOTFS_DIR [MIRROR]      (needs root, debootstrap)
set -eu
root="$1"
mirror="${2:-http://deb.debian.org/debian}"
# gcc, g++ and Python's headers: torch.compile builds kernels at run time (Inductor's C++ on
# the CPU, Triton's launcher on the GPU).
debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,gcc,g++,libc6-dev,ca-certificates \
    bookworm "$root" "$mirror"
# Nothing the image needs at run time: package lists, caches, logs, docs.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/tmp/*
