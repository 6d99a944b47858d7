"""The ``isrg`` command. Each subcommand lives in the module that implements it; this file only wires them."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

# name -> (module, function adding arguments, function running the parsed args, help)
_SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "phantom": ("nnunet_isrg.data.phantom", "add_phantom_arguments", "run_phantom_from_args",
                "generate the synthetic CT lesion phantom as an nnU-Net raw dataset"),
    "verify": ("nnunet_isrg.data.verify", "add_verify_arguments", "run_verify_from_args",
               "check a raw dataset's attribute labels against its schema and cases"),
    "import": ("nnunet_isrg.data.import_dataset", "add_import_arguments", "run_import_from_args",
               "turn a folder of image/mask pairs into an nnU-Net raw dataset"),
    "plan": ("nnunet_isrg_planners.isrg_planner", "add_plan_arguments", "run_plan_from_args",
             "nnU-Net planning + preprocessing, optionally with the ISRG planner (cubic, ViT-friendly patch)"),
    "predict": ("nnunet_isrg.inference.predict_cli", "add_predict_arguments", "run_predict_from_args",
                "segment lesions from clicks with a trained ISRG model; write masks, reports, key images, DICOM"),
    "evaluate": ("nnunet_isrg.evaluation.cli", "add_evaluate_arguments", "run_evaluate_from_args",
                 "aggregate interactive validation results across folds"),
    "compare": ("nnunet_isrg.evaluation.cli", "add_compare_arguments", "run_compare_from_args",
                "baseline-versus-ISRG tables and plots in the paper's layout"),
    "serve": ("nnunet_isrg.server.cli", "add_serve_arguments", "run_serve_from_args",
              "browser viewer and HTTP API on top of the interactive session"),
    "trainers-path": ("nnunet_isrg.environment", "add_trainers_path_arguments", "run_trainers_path_from_args",
                      "print the folder to put in nnUNet_extTrainer"),
    "setup-env": ("nnunet_isrg.environment", "add_setup_env_arguments", "run_setup_env_from_args",
                  "make this Python environment find the ISRG trainers (writes a .pth file)"),
}


def _load(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isrg", description="nnunet-isrg: interactive CT lesion segmentation and "
                                     "structured lesion reports on nnU-Net v2")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add_args, run, help_text) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            _load(module, add_args)(p)
        except ImportError as e:  # keeps the other subcommands usable if an optional dependency is missing
            p.set_defaults(_import_error=f"isrg {name} is unavailable: {e}")
        p.set_defaults(_run=(module, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_import_error", None):
        print(args._import_error, file=sys.stderr)
        return 2
    module, run = args._run
    result = _load(module, run)(args)
    return result if isinstance(result, int) else 0  # some runners return what they wrote


if __name__ == "__main__":
    sys.exit(main())
