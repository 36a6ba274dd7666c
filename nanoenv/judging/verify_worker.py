"""The verifier's worker: load a candidate's model from its checkpoint and write raw logits.

This file runs inside a fresh sandbox (no network, no data mounted) next to the candidate's
script. It depends only on the standard library, numpy, torch and safetensors: nanoenv itself
is not installed there. It computes no loss: the harness, outside the sandbox, turns the logits
into losses with its own code (log-softmax and gather), so nothing the candidate does in this
process can touch the scoring. What this worker guards is that the logits come from the
trained weights: they are read with safetensors (never unpickled) and loaded through torch's
own ``Module.load_state_dict``, captured before the candidate is imported, then compared.

Input (``$NANOENV_INPUT_DIR``): ``train.py``, ``model.safetensors``, ``model.json``,
``inputs.npz`` (``x``: int64 token windows, [N, T], shuffled; optionally ``pos``: the positions
of each window to return, [N, P]) and ``plan.json`` (``mode``: ``logits`` or ``logprobs``).
Output (``$NANOENV_OUT_DIR``): ``logits.npy`` (float32, [N, P or T, vocab]), or for
``logprobs`` ``logprobs.npy`` (float32, [N, T - 1]: the log-prob of token t + 1 at position t,
every target a token of the input, so the worker learns nothing the input does not hold), and
``report.json``. The log-probs are computed here, next to the candidate's code: the harness
audits them against raw logits from a second run (nanoenv/judging/audit.py).
"""

import importlib.util
import json
import os
import sys
import time
import traceback

import numpy as np
import torch
from safetensors.torch import load_file

# Captured before the candidate is imported, so a script that patches torch cannot swap them.
_Module = torch.nn.Module
_load_state_dict = torch.nn.Module.load_state_dict
_state_dict = torch.nn.Module.state_dict
_Tensor = torch.Tensor
_no_grad = torch.no_grad
_equal = torch.equal
_gather = torch.gather
_log_softmax = torch.log_softmax
_autocast = torch.autocast
_np_save = np.save
_perf = time.perf_counter
_exit = os._exit


def fail(report, out_dir, message):
    report["error"] = message
    write_report(report, out_dir)
    sys.exit(3)


def write_report(report, out_dir):
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f)


def import_candidate(path):
    sys.path.insert(0, os.path.dirname(path))  # the modules a record's folder ships beside it
    spec = importlib.util.spec_from_file_location("candidate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["candidate"] = module
    spec.loader.exec_module(module)  # runs top-level code only: training sits under __main__
    return module


def load_weights(model, path, report):
    """Load the checkpoint with torch's own method; check every tensor matches it."""
    checkpoint = load_file(path)  # safetensors: a header and raw tensors, never pickle
    expected = _state_dict(model)
    by_ptr = {}
    for name, tensor in expected.items():
        by_ptr.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)
    # Tied weights appear once in a safetensors file; the other names share their storage.
    missing = [n for n in expected if n not in checkpoint]
    untied = [
        n for n in missing
        if not any(m in checkpoint for m in by_ptr[(expected[n].data_ptr(), tuple(expected[n].shape))])
    ]  # fmt: skip
    unexpected = [n for n in checkpoint if n not in expected]
    report["checkpoint_tensors"] = len(checkpoint)
    report["parameters"] = int(sum(p.numel() for p in checkpoint.values()))
    if untied or unexpected:
        return f"the model from build_model does not match the checkpoint: missing {untied[:5]}, unexpected {unexpected[:5]}"
    _load_state_dict(model, checkpoint, strict=False)
    loaded = _state_dict(model)
    for name, tensor in checkpoint.items():
        if tuple(loaded[name].shape) != tuple(tensor.shape) or not _equal(
            loaded[name].detach().cpu(), tensor
        ):
            return f"after loading, {name} differs from the checkpoint"
    return None


def main():
    in_dir = os.environ["NANOENV_INPUT_DIR"]
    out_dir = os.environ.get("NANOENV_OUT_DIR", "out")
    device = os.environ.get("NANOENV_DEVICE", "cpu")
    os.makedirs(out_dir, exist_ok=True)
    report = {}
    with open(os.path.join(in_dir, "plan.json")) as f:
        plan = json.load(f)
    inputs = dict(np.load(os.path.join(in_dir, "inputs.npz")))
    with open(os.path.join(in_dir, "model.json")) as f:
        config = json.load(f)
    try:
        candidate = import_candidate(os.path.join(in_dir, plan["script"]))
    except BaseException:
        fail(report, out_dir, "importing the script failed:\n" + traceback.format_exc(limit=5))
    build_model = getattr(candidate, "build_model", None)
    if not callable(build_model):
        fail(report, out_dir, "the script defines no build_model(config)")
    try:
        model = build_model(config)
    except BaseException:
        fail(report, out_dir, "build_model(config) failed:\n" + traceback.format_exc(limit=5))
    if not isinstance(model, _Module):
        fail(
            report, out_dir, f"build_model returned a {type(model).__name__}, not a torch.nn.Module"
        )
    try:
        problem = load_weights(model, os.path.join(in_dir, "model.safetensors"), report)
    except BaseException as e:
        fail(report, out_dir, f"model.safetensors cannot be read as safetensors: {e}")
    if problem:
        fail(report, out_dir, problem)
    model = model.to(device)
    model.eval()
    x_all = torch.from_numpy(inputs["x"])
    pos_all = torch.from_numpy(inputs["pos"]) if "pos" in inputs else None
    logprobs = plan.get("mode") == "logprobs"
    cast = plan.get("autocast")
    chunks = []
    t = _perf()
    with (
        _no_grad(),
        _autocast(device_type=device, dtype=getattr(torch, cast or "float32"), enabled=bool(cast)),
    ):
        for i in range(0, len(x_all), plan["batch_size"]):
            x = x_all[i : i + plan["batch_size"]].to(device)
            try:
                logits = model(x)
            except BaseException:
                fail(report, out_dir, "forward failed:\n" + traceback.format_exc(limit=5))
            if type(logits) is not _Tensor:
                fail(
                    report,
                    out_dir,
                    f"forward returned a {type(logits).__name__}, not a plain torch.Tensor",
                )
            if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape):
                fail(
                    report,
                    out_dir,
                    f"forward returned shape {tuple(logits.shape)} for input {tuple(x.shape)}; expected [B, T, vocab]",
                )
            logits = _Tensor.float(_Tensor.detach(logits))
            if logprobs:
                lp = _log_softmax(logits[:, :-1], -1)
                picked = _gather(lp, 2, _Tensor.unsqueeze(x[:, 1:], -1))[..., 0]
            elif pos_all is not None:
                pos = pos_all[i : i + plan["batch_size"]].to(logits.device)
                picked = _gather(logits, 1, pos[:, :, None].expand(-1, -1, logits.size(-1)))
            else:
                picked = logits
            chunks.append(_Tensor.numpy(_Tensor.cpu(picked)).copy())
    report["seconds"] = _perf() - t
    name = "logprobs.npy" if logprobs else "logits.npy"
    _np_save(os.path.join(out_dir, name), np.concatenate(chunks))
    write_report(report, out_dir)
    sys.stdout.flush()
    # Leave at once: exit handlers or threads the candidate registered do not get to run after
    # the logits are written.
    _exit(0)


if __name__ == "__main__":
    main()
