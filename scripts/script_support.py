"""What the scripts share and the installed package does not need: the repository's folders, the
nnU-Net environment a script runs its commands in, and the README sections that benchmark scripts
write (generated tables live between two markers and are never edited by hand).

The scripts are not a package: they import this module as ``script_support``, from their own
folder (on ``sys.path`` when run as ``python scripts/NAME.py``; scripts that the tests load put it
there themselves).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

FOLDER_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def replace_readme_section(name: str, markdown: str, readme: str | os.PathLike | None = None) -> bool:
    """Replaces the block between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in the README.

    Returns False (and changes nothing, saying why on stderr) when the README or the markers are
    missing.
    """
    path = Path(readme) if readme else REPO_ROOT / "README.md"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else ""
    if begin not in text or end not in text:
        print(f"{path}: no section '{name}' ({begin} ... {end}); nothing replaced", file=sys.stderr)
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{markdown.strip()}\n{end}{tail}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    print(f"updated README section '{name}'")
    return True


def nnunet_env(work: str | os.PathLike | None = None) -> dict:
    """Sets (and returns) nnU-Net's variables for scripts: folders under ``work`` (default the repo's
    ``work/``) unless the user set them, 2 worker processes (nnU-Net's 8 overload a 2-core machine),
    no torch.compile, and the ISRG trainers on ``nnUNet_extTrainer``."""
    from nnunet_isrg.environment import trainers_path

    work = Path(work) if work else REPO_ROOT / "work"
    env = dict(os.environ)
    for var in FOLDER_VARS:
        env.setdefault(var, str(work / var))
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "2")
    env.setdefault("nnUNet_compile", "f")
    paths = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(trainers_path()) not in paths:
        paths.append(str(trainers_path()))
    env["nnUNet_extTrainer"] = os.pathsep.join(paths)
    os.environ.update(env)
    return env


def run_command(cmd: list[str], env: dict) -> float:
    """Runs a command as a user would type it (echoed), raising on failure; returns its wall time in s."""
    print("\n$ " + " ".join(cmd), flush=True)
    t = time.time()
    subprocess.run(cmd, env=env, check=True)
    return time.time() - t


class StepLog:
    """The steps of a pipeline script, each run as a user would type it (echoed) and timed, or skipped
    because its output exists.

    Every step is recorded (``steps``: key, command, wall time, skipped or not). A JSON ``ledger``
    keeps the wall times across invocations, so a skipped step still reports the time it took when
    it ran (``wall_s`` from the earlier run, ``skipped: true``) and :meth:`total_s` is the run time
    of the whole pipeline, not only of the last invocation.
    """

    def __init__(self, env: dict, ledger: str | os.PathLike | None = None):
        self.env = env
        self.ledger = Path(ledger) if ledger else None
        self.earlier: dict[str, dict] = {}
        if self.ledger is not None and self.ledger.is_file():
            import json

            try:
                self.earlier = json.loads(self.ledger.read_text())
            except ValueError:
                self.earlier = {}
        self.steps: list[dict] = []

    def run(self, key: str, cmd: list[str], done: bool, **info) -> dict:
        """Runs ``cmd`` (raising on failure) unless ``done``; returns the step's record."""
        if done:
            return self._skip(key, " ".join(map(str, cmd)), info)
        import resource

        # CPU seconds of the command, beside its wall time: on a shared machine the wall time of a step
        # grows with whatever else runs; its CPU time does not.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall_s = run_command([str(c) for c in cmd], self.env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return self._ran(key, " ".join(map(str, cmd)), wall_s, {**info, "cpu_s": round(cpu_s, 1)})

    def call(self, key: str, what: str, fn, done: bool = False, **info):
        """An in-process step (``fn()``), echoed as ``what`` and timed like a command; returns fn's result."""
        if done:
            self._skip(key, what, info)
            return None
        print(f"\n$ {what}", flush=True)
        t = time.time()
        out = fn()
        self._ran(key, what, time.time() - t, info)
        return out

    def _skip(self, key: str, command: str, info: dict) -> dict:
        before = self.earlier.get(key, {})
        print(f"\n(skipped, output exists) {command}", flush=True)
        step = {"key": key, "command": command, "skipped": True, "wall_s": before.get("wall_s"),
                "ran_at": before.get("ran_at"), **({"cpu_s": before["cpu_s"]} if "cpu_s" in before else {}), **info}
        self.steps.append(step)
        return step

    def _ran(self, key: str, command: str, wall_s: float, info: dict) -> dict:
        import datetime

        print(f"({wall_s:.0f} s)", flush=True)
        step = {"key": key, "command": command, "skipped": False, "wall_s": round(wall_s, 1),
                "ran_at": datetime.datetime.now().isoformat(timespec="seconds"), **info}
        self.steps.append(step)
        self.earlier[key] = {k: step[k] for k in ("command", "wall_s", "ran_at", "cpu_s") if k in step}
        if self.ledger is not None:
            from nnunet_isrg.files import write_json_atomic

            write_json_atomic(self.ledger, self.earlier)
        return step

    def total_s(self, steps: list[dict] | None = None) -> float:
        """Wall time of ``steps`` (default all), the skipped ones at their earlier run's time where known."""
        return float(sum(s["wall_s"] or 0.0 for s in (self.steps if steps is None else steps)))
