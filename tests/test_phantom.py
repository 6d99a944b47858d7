"""Phantom: determinism, geometry, nnU-Net validity, and that each attribute moves the image as intended."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_isrg.attributes import DEFAULT_SCHEMA, read_attribute_table, schema_from_dataset_json
from nnunet_isrg.data.phantom import (LESION_TYPES, _origin_for, dataset_digest, generate_case,
                                      generate_phantom_dataset)
from nnunet_isrg.report.evidence import lesion_evidence

SP = (1.5, 1.5, 1.5)
NO_CLOSE, CLOSE = DEFAULT_SCHEMA["invasion"]
BASE = {"shape": "Round-like", "invasion": NO_CLOSE, "density": "Hypodense", "heterogeneity": "Homogeneous",
        "surface": "Well-defined margin"}


def _evidence(lesion_type: str, n: int = 5, **forced) -> list[dict]:
    out = []
    for seed in range(n):
        img, lab, attrs, _ = generate_case(1000 + seed, lesion_type, 64, SP, attributes={**BASE, **forced})
        assert all(attrs[k] == v for k, v in {**BASE, **forced}.items())
        out.append(lesion_evidence(img, lab, SP))
    return out


def _values(rows, key):
    return np.array([r[key] for r in rows])


def test_case_is_hu_with_one_labelled_lesion():
    img, lab, attrs, extras = generate_case(3, "liver_tumour", (48, 40, 32), (1.5, 1.5, 2.0))
    assert img.shape == lab.shape == (32, 40, 48) and img.dtype == np.float32 and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 1}
    assert img.min() >= -1024 and img[0, 0, 0] < -900  # air outside the body
    assert np.allclose(img, np.round(img))
    assert set(attrs) == set(DEFAULT_SCHEMA) | {"lesion_type"}
    for name, classes in DEFAULT_SCHEMA.items():
        assert attrs[name] in classes
    assert extras["host_organ"] == "liver" and extras["organ_map"].shape == img.shape


def test_every_type_generates_and_lung_is_air():
    for i, lesion_type in enumerate(LESION_TYPES):
        img, lab, attrs, extras = generate_case(i, lesion_type, 48, 2.0)
        assert lab.sum() >= 4, lesion_type
    img, _, _, extras = generate_case(0, "lung_tumour", 64, SP)
    lung = extras["organ_map"] == 4
    assert -900 < np.median(img[lung]) < -800


def test_determinism_same_seed_same_bytes(tmp_path):
    kw = dict(n_cases=4, size=40, spacing=1.5, include_types=["liver_tumour", "kidney_stone"], progress=False)
    a = generate_phantom_dataset(tmp_path / "a", seed=7, **kw)
    b = generate_phantom_dataset(tmp_path / "b", seed=7, **kw)
    c = generate_phantom_dataset(tmp_path / "c", seed=8, **kw)
    da, db, dc = dataset_digest(a), dataset_digest(b), dataset_digest(c)
    assert len(da) == 4 * 2 + 2 and da == db
    images = [k for k in da if k.startswith("imagesTr")]
    assert all(da[k] != dc[k] for k in images)
    with pytest.raises(FileExistsError):
        generate_phantom_dataset(tmp_path / "a", seed=7, **kw)


@pytest.mark.parametrize("size,spacing,direction", [
    (40, (1.5, 1.5, 1.5), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    ((40, 36, 24), (0.8, 0.8, 2.5), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
])
def test_geometry_round_trip(tmp_path, size, spacing, direction):
    folder = generate_phantom_dataset(tmp_path, n_cases=2, size=size, spacing=spacing, seed=1, direction=direction,
                                      include_types=["liver_tumour"], progress=False)
    size_xyz = (size,) * 3 if isinstance(size, int) else size
    origin = _origin_for(size_xyz, spacing)
    assert abs(origin[2]) > 100  # non-trivial origin
    for sub, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        im = sitk.ReadImage(str(folder / sub / f"case_0000{suffix}"))
        assert im.GetSize() == tuple(size_xyz)
        assert np.allclose(im.GetSpacing(), spacing, atol=1e-5)
        assert np.allclose(im.GetOrigin(), origin, atol=1e-3)
        assert np.allclose(im.GetDirection(), direction, atol=1e-6)
    assert sitk.ReadImage(str(folder / "imagesTr" / "case_0000_0000.nii.gz")).GetPixelID() == sitk.sitkInt16
    assert sitk.ReadImage(str(folder / "labelsTr" / "case_0000.nii.gz")).GetPixelID() == sitk.sitkUInt8


def test_dataset_files_validate_and_pass_nnunet_integrity_check(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = generate_phantom_dataset(tmp_path, dataset_id=42, name="Tiny", n_cases=5, size=40, seed=3,
                                      include_types=["liver_tumour", "gastric_cancer", "lung_tumour"],
                                      holdout_types=["gallstone"], progress=False)
    assert folder.name == "Dataset042_Tiny"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"} and dj["labels"] == {"background": 0, "lesion": 1}
    assert dj["file_ending"] == ".nii.gz" and dj["isrg"]["lesion_labels"] == [1]
    schema = schema_from_dataset_json(dj)
    assert dict(schema) == {k: list(v) for k, v in DEFAULT_SCHEMA.items()}
    train_ids = [p.name[:-len(".nii.gz")] for p in sorted((folder / "labelsTr").glob("*.nii.gz"))]
    test_ids = [p.name[:-len(".nii.gz")] for p in sorted((folder / "labelsTs").glob("*.nii.gz"))]
    assert dj["numTraining"] == len(train_ids) and len(train_ids) + len(test_ids) == 5 and test_ids
    tr = read_attribute_table(folder / "attributesTr.json", schema, train_ids)
    ts = read_attribute_table(folder / "attributesTs.json", schema, test_ids)
    assert sorted(tr) == train_ids and sorted(ts) == test_ids
    assert all(v["lesion_type"] != "gallstone" for v in tr.values())
    assert all(v["lesion_type"] == "gallstone" for v in ts.values())
    assert dj["isrg"]["lesion_types"]["gallstone"]["split"] == "zero-shot"
    assert all(len(v) == 6 for v in tr.values())
    verify_dataset_integrity(str(folder), num_processes=1)


def test_density_moves_contrast_with_shell():
    hypo = _values(_evidence("liver_tumour", density="Hypodense"), "contrast_hu")
    iso = _values(_evidence("liver_tumour", density="Isodense"), "contrast_hu")
    hyper = _values(_evidence("liver_tumour", density="Hyperdense"), "contrast_hu")
    assert (hypo < -25).all() and (hyper > 25).all()
    assert (np.abs(iso) < 12).all(), iso


def test_isodense_is_findable_by_its_rim():
    iso = _values(_evidence("kidney_tumour", 4, density="Isodense"), "rim_contrast_hu")
    # a plain lesion's boundary layer only mixes with the host: |rim| is a fraction of the contrast
    assert (np.abs(iso) > 12).all(), iso


def test_heterogeneity_raises_internal_std():
    homo = _values(_evidence("liver_tumour", heterogeneity="Homogeneous"), "std_hu_inside")
    het = _values(_evidence("liver_tumour", heterogeneity="Heterogeneous"), "std_hu_inside")
    assert het.min() > homo.max(), (homo, het)


def test_ill_defined_margin_is_wider_and_less_steep():
    well = _evidence("liver_tumour", surface="Well-defined margin")
    ill = _evidence("liver_tumour", surface="Ill-defined margin")
    assert np.median(_values(ill, "edge_width_mm")) > 1.5 * np.median(_values(well, "edge_width_mm"))
    assert _values(ill, "margin_gradient_hu_per_mm").mean() < _values(well, "margin_gradient_hu_per_mm").mean()


def test_close_relationship_means_contact():
    apart = _evidence("liver_tumour", invasion=NO_CLOSE)
    close = _evidence("liver_tumour", invasion=CLOSE)
    # a lesion clear of its host's boundary is surrounded by host tissue only
    assert _values(apart, "contact_fraction").max() < 0.05
    # a close one crosses into fat / another organ or abuts an enhanced vessel (a soft-tissue
    # neighbour is the same HU class, hence the vessel)
    touching = _values(close, "contact_fraction") + _values(close, "shell_fraction_enhanced")
    assert np.median(touching) > 0.1 and (touching > _values(apart, "contact_fraction").max()).all(), touching
    lung_apart = _values(_evidence("lung_tumour", 3, density="Hyperdense", invasion=NO_CLOSE), "contact_fraction")
    lung_close = _values(_evidence("lung_tumour", 3, density="Hyperdense", invasion=CLOSE), "contact_fraction")
    assert lung_close.min() > lung_apart.max()


def test_shape_attributes():
    round_ = _evidence("liver_tumour", shape="Round-like")
    irregular = _evidence("liver_tumour", shape="Irregular")
    assert _values(round_, "sphericity").min() > _values(irregular, "sphericity").max()
    wall = _evidence("gastric_cancer", 4, shape="Wall thickening", density="Hyperdense")
    assert np.median(_values(wall, "thickness_ratio")) < np.median(_values(round_, "thickness_ratio"))
    punct = _evidence("kidney_stone", 4, shape="Punctate, nodular", density="Hyperdense")
    assert _values(punct, "volume_mm3").max() < _values(round_, "volume_mm3").min()


def test_sixty_cases_generate_quickly(tmp_path):
    import time

    t = time.time()
    generate_phantom_dataset(tmp_path, n_cases=6, size=64, seed=0, progress=False)
    per_case = (time.time() - t) / 6
    assert per_case < 1.0  # 60 cases of 64^3 in under a minute (typically ~0.15 s per case)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown lesion type"):
        generate_case(0, "brain_tumour")
    with pytest.raises(ValueError, match="holdout_types"):
        generate_phantom_dataset(tmp_path, holdout_types=["nope"], progress=False)
    with pytest.raises(ValueError, match="spacing"):
        generate_case(0, "liver_tumour", 32, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="Wall thickening"):
        generate_case(0, "liver_tumour", 32, 1.5, attributes={"shape": "Wall thickening"})
