"""Shared fixtures: one small phantom dataset planned and preprocessed by nnU-Net, and one model
trained on it by the real ``nnUNetv2_train`` command with the debug trainer. Built once per test
session in a temporary nnU-Net folder tree."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REALDATA = REPO.parent / "shared" / "realdata"
PHANTOM_ID = 990
PHANTOM_NAME = f"Dataset{PHANTOM_ID}_TestPhantom"


def load_script(name: str):
    """The module of ``scripts/<name>.py``, a product script (the scripts are not a package; their
    shared helper ``scripts/script_support.py`` is imported from their folder). Only ``scripts/``
    itself: the experiments in ``scripts/experiments/`` are not part of the product and no test
    loads them."""
    import importlib.util

    path = REPO / "scripts" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such product script (tests load scripts/<name>.py only)")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nnunet_cmd(name: str) -> str:
    return str(BIN / name)


def run_cmd(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    if proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {k: root / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in dirs.items():
        v.mkdir()
        os.environ[k] = str(v)
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    os.environ.setdefault("nnUNet_compile", "f")
    from nnunet_isrg.environment import trainers_path

    os.environ["nnUNet_extTrainer"] = str(trainers_path())
    return dirs


@pytest.fixture(scope="session")
def phantom_raw(nnunet_dirs) -> Path:
    """A 16-case phantom (48^3 voxels, 1.5 mm) as an nnU-Net raw dataset, written by the CLI."""
    run_cmd([nnunet_cmd("isrg"), "phantom", "--out", str(nnunet_dirs["nnUNet_raw"]), "--dataset-id", str(PHANTOM_ID),
             "--name", "TestPhantom", "--n-cases", "16", "--size", "48", "--spacing", "1.5",
             "--seed", "7"])
    return nnunet_dirs["nnUNet_raw"] / PHANTOM_NAME


@pytest.fixture(scope="session")
def phantom_preprocessed(phantom_raw, nnunet_dirs) -> Path:
    """nnU-Net's real planning and preprocessing of the phantom (3d_fullres)."""
    run_cmd([nnunet_cmd("nnUNetv2_plan_and_preprocess"), "-d", str(PHANTOM_ID), "-c", "3d_fullres",
             "-npfp", "2", "-np", "2", "--verify_dataset_integrity"])
    return nnunet_dirs["nnUNet_preprocessed"] / PHANTOM_NAME


@pytest.fixture(scope="session")
def debug_model(phantom_preprocessed, nnunet_dirs) -> Path:
    """``nnUNetv2_train 990 3d_fullres 0 -tr ISRGTrainer_Debug -device cpu``; returns the model folder."""
    proc = run_cmd([nnunet_cmd("nnUNetv2_train"), str(PHANTOM_ID), "3d_fullres", "0", "-tr", "ISRGTrainer_Debug",
                    "-device", "cpu"])
    folder = nnunet_dirs["nnUNet_results"] / PHANTOM_NAME / "ISRGTrainer_Debug__nnUNetPlans__3d_fullres"
    (folder / "train_stdout.txt").write_text(proc.stdout)
    return folder
