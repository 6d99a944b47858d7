"""nnU-Net finds the ISRG trainers with no step from the user: the .pth written by `isrg setup-env`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import nnunet_cmd

from nnunet_isrg.environment import PTH_NAME, trainers_path, write_pth


def test_trainers_path_holds_the_discoverable_trainer_files():
    path = trainers_path()
    assert (path / "isrg_trainers.py").is_file()
    out = subprocess.run([nnunet_cmd("isrg"), "trainers-path", "--export"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"export nnUNet_extTrainer={path}"


def test_pth_sets_nnunet_exttrainer_at_startup_and_keeps_user_paths(tmp_path):
    target = write_pth(tmp_path)
    assert target == tmp_path / PTH_NAME
    code = "import site, sys, os; site.addsitedir(sys.argv[1]); print(os.environ['nnUNet_extTrainer'])"
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == str(trainers_path())
    env["nnUNet_extTrainer"] = "/somewhere/else"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip().split(os.pathsep) == ["/somewhere/else", str(trainers_path())]


def test_nnunet_finds_every_isrg_trainer_by_name():
    from nnunet_isrg.training import variants

    env = dict(os.environ, nnUNet_extTrainer=str(trainers_path()))
    names = ["ISRGTrainer"] + list(variants.__all__)
    code = ("import sys\nfrom nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "for n in sys.argv[1:]:\n    c = f(n)\n    print(c.__module__, c.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, check=True)
    found = [l.split() for l in out.stdout.splitlines() if l.startswith("nnunet_isrg.")]
    assert [n for _, n in found] == names
    # defined in the package (picklable), only re-exported by the trainers/ folder
    assert all(m.startswith("nnunet_isrg.training.") for m, _ in found)
