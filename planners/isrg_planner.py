"""ISRG experiment planner: isotropic spacing chosen so lesions fit the ViT's cubic crop.

nnU-Net's default plans pick the spacing and a patch for a U-Net. An ISRG model sees one cubic crop
around a lesion through a ViT with isotropic patches, so this planner (a subclass that changes the
3d_fullres spacing and patch) makes the 3d_fullres configuration:

- isotropic target spacing: the finest median spacing of the dataset, coarsened just enough that
  the 90th percentile of lesion extents fills at most ``fill_fraction`` of the crop, capped at
  ``max_spacing_mm``;
- ``patch_size`` = the crop of the chosen model preset (cubic, a multiple of the ViT patch).

Preprocessing stays nnU-Net's ``DefaultPreprocessor`` so ``nnUNetv2_predict`` and the trainers work
unchanged. The raw dataset's ``attributesTr.json`` and ``splits_final.json`` (e.g. the LIDC import's
patient-grouped folds), when present, are copied into the preprocessed folder, where the trainers
read them. nnU-Net finds planners only inside its own package, so this one runs through nnU-Net's
Python API from ``isrg plan``.
"""
from __future__ import annotations

import argparse
import json
from os.path import isfile, join
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id, maybe_convert_to_dataset_name
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunet_isrg.attributes import lesion_labels_from_dataset_json
from nnunet_isrg.data.verify import copy_attributes_to_preprocessed, copy_splits_to_preprocessed
from nnunet_isrg.modeling.from_plans import preset_crop_size

ISRG_PLANS_NAME = "nnUNetISRGPlans"


def lesion_extents_mm(raw_dataset_folder: str, dataset_json: dict, lesion_labels: Sequence[int]) -> np.ndarray:
    """Largest physical bounding-box extent (mm) of the lesion voxels of each training case."""
    extents = []
    for case in get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json).values():
        img = sitk.ReadImage(case["label"])
        arr = np.isin(sitk.GetArrayViewFromImage(img), lesion_labels)
        if not arr.any():
            continue
        idx = np.argwhere(arr)
        size_vox = idx.max(0) - idx.min(0) + 1                      # z, y, x
        extents.append(float(np.max(size_vox * np.array(img.GetSpacing()[::-1]))))
    return np.array(extents)


class ISRGPlanner(ExperimentPlanner):
    fill_fraction = 0.75
    max_spacing_mm = 3.0

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = ISRG_PLANS_NAME,
                 overwrite_target_spacing=None, suppress_transpose: bool = False,
                 crop_size: Sequence[int] = (64, 64, 64)):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        if len(set(crop_size)) != 1:
            raise ValueError(f"the ISRG crop must be cubic, got {tuple(crop_size)}")
        self.crop_size = [int(s) for s in crop_size]

    def determine_fullres_target_spacing(self) -> np.ndarray:
        if self.overwrite_target_spacing is not None:
            return np.array(self.overwrite_target_spacing)
        finest = float(np.min(np.median(np.vstack(self.dataset_fingerprint["spacings"]), 0)))
        extents = lesion_extents_mm(self.raw_dataset_folder, self.dataset_json,
                                    lesion_labels_from_dataset_json(self.dataset_json))
        needed = float(np.percentile(extents, 90)) / (self.fill_fraction * self.crop_size[0]) if len(extents) else 0
        spacing = min(max(finest, needed), self.max_spacing_mm)
        return np.array([spacing] * 3)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(plan["patch_size"]) == 3:
            plan["patch_size"] = list(self.crop_size)
            plan["batch_size"] = 2
        return plan


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (in nnUNet_raw)")
    parser.add_argument("--planner", choices=("isrg", "default"), default="isrg",
                        help="isrg: plans 'nnUNetISRGPlans' (isotropic, cubic crop); default: nnU-Net's nnUNetPlans")
    parser.add_argument("--preset", default="tiny", help="model preset whose crop becomes the patch (isrg planner)")
    parser.add_argument("--spacing", type=float, default=None, help="force an isotropic target spacing in mm")
    parser.add_argument("-npfp", type=int, default=2, help="processes for fingerprint extraction")
    parser.add_argument("-np", type=int, default=2, help="processes for preprocessing")
    parser.add_argument("--verify", action="store_true", help="run nnU-Net's dataset integrity check first")


def run_plan_from_args(args: argparse.Namespace) -> int:
    dataset_id = int(args.dataset) if str(args.dataset).isdigit() else convert_dataset_name_to_id(args.dataset)
    extract_fingerprint_dataset(dataset_id, num_processes=args.npfp, check_dataset_integrity=args.verify)
    name = maybe_convert_to_dataset_name(dataset_id)
    spacing = [args.spacing] * 3 if args.spacing else None
    if args.planner == "isrg":
        planner = ISRGPlanner(dataset_id, crop_size=preset_crop_size(args.preset), overwrite_target_spacing=spacing)
    else:
        planner = ExperimentPlanner(dataset_id, overwrite_target_spacing=spacing)
    planner.plan_experiment()
    preprocess_dataset(dataset_id, planner.plans_identifier, configurations=("3d_fullres",), num_processes=(args.np,))
    raw = join(str(nnUNet_raw), name)
    if isfile(join(raw, "attributesTr.json")):
        copy_attributes_to_preprocessed(raw, join(str(nnUNet_preprocessed), name))
    splits = copy_splits_to_preprocessed(raw, join(str(nnUNet_preprocessed), name))  # e.g. patient-grouped folds
    if splits is not None:
        print(f"{name}: the raw dataset's cross-validation folds copied to {splits}")
    with open(join(str(nnUNet_preprocessed), name, planner.plans_identifier + ".json")) as f:
        cfg = json.load(f)["configurations"]["3d_fullres"]
    print(f"{name}: plans '{planner.plans_identifier}', 3d_fullres spacing {cfg['spacing']} mm, "
          f"patch {cfg['patch_size']}. Train with: nnUNetv2_train {dataset_id} 3d_fullres FOLD "
          f"-tr ISRGTrainer_Tiny -p {planner.plans_identifier}")
    return 0
