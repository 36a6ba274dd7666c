"""Tasks: ``envs/<task>/task.toml`` plus its baseline script, loaded into a :class:`TaskSpec`.

envs/ is data, not code. In a source checkout it sits at the top of the repository; in an
installed wheel it is shipped as ``nanoenv/_data/envs``.
"""

from __future__ import annotations

import difflib
import functools
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nanoenv.errors import TaskError
from nanoenv.types import DataSpec, TaskSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NAMESPACE = "nanoenv/"
# The track an env, the CLI and the demo use unless told otherwise: the newest CPU track.
DEFAULT_TASK = "Speedrun-Tiny-v1"


def resource_dir(name: str) -> Path:
    """The folder of a top-level data directory (``envs`` or ``sandbox``), installed or not."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise TaskError(f"cannot find the {name}/ folder next to {here}; is nanoenv installed fully?")


@functools.cache
def _discover() -> tuple[dict[str, Path], tuple[str, ...]]:
    """Every envs/*/task.toml: a map from each task's id and folder name to it, and the ids."""
    found: dict[str, Path] = {}
    ids: list[str] = []
    for toml_path in sorted(resource_dir("envs").glob("*/task.toml")):
        with open(toml_path, "rb") as f:
            task_id = tomllib.load(f).get("id", toml_path.parent.name)
        found[task_id] = toml_path
        found[toml_path.parent.name] = toml_path
        ids.append(task_id)
    return found, tuple(sorted(ids))


def _task_files() -> dict[str, Path]:
    return _discover()[0]


def discovered_ids() -> list[str]:
    """The id of every envs/*/task.toml, read without validating the task (registration uses
    this: a new folder is a new id, with no code change, and importing nanoenv stays cheap)."""
    return list(_discover()[1])


def task_ids() -> list[str]:
    """The ids of all tasks, e.g. ``Speedrun-Tiny-v1``, each loaded and validated."""
    return sorted({load_task(t).id for t in discovered_ids()})


def load_task(name: str | TaskSpec, **overrides: Any) -> TaskSpec:
    """Load a task by id (``Speedrun-Tiny-v0``, with or without ``nanoenv/``), by its folder's
    name under envs/, or by the path of a task folder anywhere (a candidate track). A TaskSpec
    is taken as it is (a task built in code, e.g. a loaded one at another size), overrides
    applied and validated the same way.

    Args:
        name: The task's id, its folder under envs/, a task folder's path, or a TaskSpec.
        **overrides: Top-level TaskSpec fields to replace (e.g. ``max_steps=5``).

    Raises:
        TaskError: the task does not exist (with the nearest names) or its toml is invalid.
    """
    if isinstance(name, TaskSpec):
        try:
            return TaskSpec.model_validate({**name.model_dump(), **overrides})
        except ValidationError as e:
            raise TaskError(f"task {name.id} with {sorted(overrides)} is not valid: {e}") from None
    key = name.removeprefix(NAMESPACE)
    files = _task_files()
    folder = Path(name)
    if key not in files and (folder / "task.toml").is_file():
        # A task folder outside envs/ (a track being calibrated): loaded, never registered.
        # Ids and envs/ names come first, so a folder in the cwd never shadows a track.
        key, files = name, {name: (folder / "task.toml").resolve()}
    if key not in files:
        lowered = {k.lower(): k for k in files}
        if key.lower() in lowered:
            key = lowered[key.lower()]
        else:
            near = difflib.get_close_matches(key, list(files), n=2, cutoff=0.3)
            hint = f"; did you mean {' or '.join(f'`{n}`' for n in near)}?" if near else ""
            raise TaskError(f"task `{name}` not found{hint} (known: {', '.join(sorted(files))})")
    path = files[key]
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    raw.update(overrides)
    raw["task_dir"] = path.parent
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as e:
        raise TaskError(f"{path} is not a valid task: {e}") from None


def baseline_script(task: TaskSpec) -> str:
    """The text of the task's baseline script."""
    assert task.task_dir is not None
    return (task.task_dir / (task.source or task.script)).read_text(encoding="utf-8")


# What a folder given as a baseline may ship beside its script (a record's own modules).
MAX_MODULES_BYTES = 4 * 1024**2
MAIN_SCRIPTS = ("train_gpt.py", "train_gpt2.py")


def own_baseline(path: Path, task: TaskSpec) -> tuple[str, dict[str, str]]:
    """A user's baseline: a script, or a folder (a modded-nanogpt record) holding the script
    and the Python modules it imports. Returns the script and the modules, which travel beside
    it in every job unchanged (an action edits the script only). The script in a folder is the
    one named like the task's, else train_gpt.py or train_gpt2.py, else its only .py file."""
    path = Path(path)
    if path.is_file():
        return path.read_text(encoding="utf-8"), {}
    if not path.is_dir():
        raise TaskError(f"the baseline {path} is neither a file nor a folder")
    py = sorted(p.name for p in path.glob("*.py") if p.is_file())
    main = next((n for n in (task.script, *MAIN_SCRIPTS) if n in py), None)
    if main is None and len(py) == 1:
        main = py[0]
    if main is None:
        raise TaskError(
            f"the baseline folder {path} has no {task.script}, train_gpt.py or train_gpt2.py "
            f"and {len(py)} .py files ({', '.join(py) or 'none'}): name the script instead"
        )
    try:
        modules = {
            n: (path / n).read_text(encoding="utf-8") for n in py if n not in (main, task.script)
        }
        script = (path / main).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(
            f"a .py file in the baseline folder {path} is not UTF-8 text: {e}"
        ) from None
    if sum(len(t.encode()) for t in modules.values()) > MAX_MODULES_BYTES:
        raise TaskError(f"the modules beside {main} in {path} exceed {MAX_MODULES_BYTES} bytes")
    return script, modules


def smoke_task(task: TaskSpec) -> TaskSpec:
    """The task at its smoke size: its own target, baseline time, deadline, device, data."""
    if task.smoke is None:
        raise TaskError(f"task {task.id} has no smoke size")
    s = task.smoke
    baseline = task.baseline.model_copy(update={
        "val_loss": s.target_val_loss, "train_time_s": s.baseline_train_time_s,
        "hidden_loss": s.target_hidden_loss, "tokens": s.baseline_tokens,
    })  # fmt: skip
    data = task.data
    if s.dataset:  # smoke data, in the same layout as the real data
        data = DataSpec(dataset=s.dataset, auto_prepare=True, record_layout=data.record_layout)
    return task.model_copy(
        update={
            "target_val_loss": s.target_val_loss,
            "target_hidden_loss": s.target_hidden_loss,
            "baseline": baseline,
            "limits": task.limits.model_copy(update={**s.limits, "timeout_s": s.timeout_s}),
            "device": s.device or task.device,
            "processes": s.processes or task.processes,
            "gpus": task.gpus if s.gpus is None else s.gpus,
            "env": {**task.env, **s.env},
            "data": data,
            "verify": task.verify.model_copy(update=s.verify),
        }
    )
