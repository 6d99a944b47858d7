"""Balanced attribute decisions: the report's class probabilities as if every class had been equally
common in training (prior correction), in the predictor and in the non-deep baseline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_isrg.attributes import attribute_class_counts, balanced_probabilities, validate_schema
from nnunet_isrg.evaluation.attribute_baseline import fit_attribute_baseline, predict
from nnunet_isrg.inference.lesion_predictor import LesionPredictor
from stand_ins import BrightLesionStandIn

SCHEMA = validate_schema({"spiculation": ["No spiculation", "Spiculated"],
                          "texture": ["Non-solid", "Part solid", "Solid"]})


def test_balanced_probabilities_divide_out_the_training_prevalence_by_hand():
    # 0.8 / (9+1)/12 = 0.96 and 0.2 / (1+1)/12 = 1.2, renormalised: 0.96 / 2.16 and 1.2 / 2.16
    out = balanced_probabilities({"no": 0.8, "yes": 0.2}, {"no": 9, "yes": 1})
    assert out == pytest.approx({"no": 0.96 / 2.16, "yes": 1.2 / 2.16})
    assert max(out, key=out.get) == "yes"                      # the rare class is no longer outvoted
    # equal classes, no counts or no labelled case: the probabilities as they are
    assert balanced_probabilities({"no": 0.8, "yes": 0.2}, {"no": 5, "yes": 5}) == pytest.approx(
        {"no": 0.8, "yes": 0.2})
    assert balanced_probabilities({"no": 0.8, "yes": 0.2}, None) == {"no": 0.8, "yes": 0.2}
    assert balanced_probabilities({"no": 0.8, "yes": 0.2}, {"no": 0, "yes": 0}) == {"no": 0.8, "yes": 0.2}
    # a class no training case had keeps 1/3 as prevalence: 0.1 * 3 = 0.3 against 0.45 * 103/51, so it is not named
    # (dividing its 0.1 by an add-one prevalence of 1/103 would have made it 10.3, the winner)
    out = balanced_probabilities({"a": 0.45, "b": 0.45, "c": 0.10}, {"a": 50, "b": 50, "c": 0})
    a = 0.45 * 103 / 51
    assert out == pytest.approx({"a": a / (2 * a + 0.3), "b": a / (2 * a + 0.3), "c": 0.3 / (2 * a + 0.3)})
    assert max(out, key=out.get) != "c"


def test_class_counts_of_a_table_by_hand():
    table = {"a": {"spiculation": "Spiculated", "texture": "Solid"}, "b": {"spiculation": "No spiculation"},
             "c": {"texture": "Solid"}, "d": {"spiculation": "No spiculation", "texture": "Non-solid"}}
    counts = attribute_class_counts(table, SCHEMA, ["a", "b", "c"])   # "d" is not a training case
    assert counts == {"spiculation": {"No spiculation": 1, "Spiculated": 1},
                      "texture": {"Non-solid": 0, "Part solid": 0, "Solid": 2}}


def test_the_predictor_reports_balanced_probabilities_when_it_knows_the_training_classes():
    volume = torch.full((1, 20, 20, 20), -3.5)
    volume[0, 8:12, 8:12, 8:12] = 4.0
    counts = {"spiculation": {"No spiculation": 9, "Spiculated": 1}}
    plain = LesionPredictor(BrightLesionStandIn((16,) * 3, SCHEMA), SCHEMA, volume).predict([((10, 10, 10), True)])
    balanced = LesionPredictor(BrightLesionStandIn((16,) * 3, SCHEMA), SCHEMA, volume,
                               attribute_class_counts=counts).predict([((10, 10, 10), True)])
    # the stand-in's logits are (2, 1): softmax 0.731 / 0.269; weighted by 12/10 and 12/2
    p = 1 / (1 + math.exp(-1))
    yes = (1 - p) * 6 / ((1 - p) * 6 + p * 1.2)
    assert plain.attribute_probs["spiculation"]["Spiculated"] == pytest.approx(1 - p, abs=1e-6)
    assert balanced.attribute_probs["spiculation"]["Spiculated"] == pytest.approx(yes, abs=1e-6)
    assert balanced.attribute_probs["texture"] == pytest.approx(plain.attribute_probs["texture"])   # no counts


def test_the_baselines_balanced_decision_is_the_forests_probability_over_the_prevalence():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = np.where(X[:, 0] + rng.normal(scale=1.5, size=120) > 1.6, "Spiculated", "No spiculation")
    model = fit_attribute_baseline(X, {"spiculation": list(y)}, ["f0", "f1", "f2"], n_estimators=50)
    X_new = rng.normal(size=(60, 3))
    forest = model.models["spiculation"]
    proba = forest.predict_proba(X_new)
    counts = dict(zip(*np.unique(y, return_counts=True)))
    prior = np.array([counts[c] + 1 for c in forest.classes_], float)
    expected = list(forest.classes_[np.argmax(proba / prior, axis=1)])
    assert predict(model, X_new, balanced=True)["spiculation"] == expected
    assert predict(model, X_new)["spiculation"] == list(forest.predict(X_new))
    assert expected.count("Spiculated") > list(forest.predict(X_new)).count("Spiculated")
