"""Where nnU-Net finds the ISRG trainers, and default nnU-Net folders for the demo.

nnU-Net (>= 2.7) reads ``nnUNet_extTrainer`` when it looks a trainer up, for ``nnUNetv2_train`` and
``nnUNetv2_predict`` alike. ``isrg setup-env`` writes a ``.pth`` file into this environment's
site-packages that sets the variable at interpreter start-up (unless the user set it), so the
trainers are found with no further step, also for a non-editable install.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sysconfig
from pathlib import Path

from nnunet_isrg.files import atomic_path

PTH_NAME = "nnunet_isrg_trainers.pth"
EXT_TRAINER_VAR = "nnUNet_extTrainer"


def trainers_path() -> Path:
    """The installed folder holding the thin, nnU-Net-discoverable trainer files."""
    spec = importlib.util.find_spec("nnunet_isrg_trainers")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nnunet_isrg_trainers is not installed; reinstall nnunet-isrg (pip install .)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def pth_line() -> str:
    # A .pth line that starts with "import" is executed by site.py at start-up; it must be one line.
    path = str(trainers_path())
    return (f"import os; p = {path!r}; v = os.environ.get({EXT_TRAINER_VAR!r}, ''); "
            f"os.environ[{EXT_TRAINER_VAR!r}] = v if p in v.split(os.pathsep) else os.pathsep.join(x for x in (v, p) if x)\n")


def write_pth(site_packages: str | os.PathLike | None = None) -> Path:
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    # the temporary name must not end in .pth: site.py would run a half-written one at start-up
    with atomic_path(target, suffix=".tmp") as tmp:
        tmp.write_text(pth_line())
    return target


def add_trainers_path_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", action="store_true", help="print a shell 'export nnUNet_extTrainer=...' line")


def run_trainers_path_from_args(args: argparse.Namespace) -> int:
    path = trainers_path()
    print(f"export {EXT_TRAINER_VAR}={path}" if args.export else path)
    return 0


def add_setup_env_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site-packages", default=None,
                        help="where to write the .pth file (default: this environment's site-packages)")


def run_setup_env_from_args(args: argparse.Namespace) -> int:
    target = write_pth(args.site_packages)
    print(f"wrote {target}: Python in this environment now finds the ISRG trainers "
          f"({EXT_TRAINER_VAR} includes {trainers_path()})")
    return 0
