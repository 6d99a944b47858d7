"""nnU-Net environment for the scripts: default folders, process counts, and the ISRG trainers path."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from nnunet_isrg.utils.readme import REPO_ROOT

FOLDER_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


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
