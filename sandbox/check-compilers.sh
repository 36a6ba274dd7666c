#!/bin/sh
# Does this image have what torch.compile needs at run time: cc, c++ and Python.h for the
# python3 on PATH? Exit 1 if not; with --explain, say what is missing.
missing=""
command -v cc >/dev/null 2>&1 || missing="$missing cc"
command -v c++ >/dev/null 2>&1 || missing="$missing c++"
include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)
[ -n "$include" ] && [ -f "$include/Python.h" ] || missing="$missing Python.h"
[ -z "$missing" ] && exit 0
if [ "${1:-}" = "--explain" ]; then
    echo "nanoenv: the sandbox's base image lacks:$missing. torch.compile builds kernels at run" >&2
    echo "time (Inductor: a C++ compiler; Triton: a C compiler and Python's headers)." >&2
    echo "Use the offline base (nanoenv sandbox build) or a base image that has them." >&2
fi
exit 1
