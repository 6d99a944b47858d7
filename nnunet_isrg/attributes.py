"""Structured lesion report schema (paper Table 1), label encoding and ``attributesTr.json`` I/O.

``attributesTr.json`` lies beside ``dataset.json`` and maps each case id to the attributes of the
largest lesion of that case::

    {"case_000": {"shape": "Round-like", "density": "Hypodense", ..., "lesion_type": "liver_tumour"}}

A missing attribute (or a missing case) means *unknown*: it is encoded as ``IGNORE_INDEX`` and
masked out of the loss, never guessed. ``lesion_type`` is optional metadata, not an attribute.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

ATTRIBUTES_FILENAME = "attributesTr.json"
IGNORE_INDEX = -1
#: keys of a case entry that are metadata, not attributes
METADATA_KEYS = ("lesion_type",)

DEFAULT_SCHEMA: "OrderedDict[str, list[str]]" = OrderedDict(
    shape=["Round-like", "Irregular", "Wall thickening", "Punctate, nodular"],
    invasion=[
        "No close relationship with adjacent structures",
        "Close relationship with adjacent structures",
    ],
    density=["Hypodense", "Isodense", "Hyperdense"],
    heterogeneity=["Homogeneous", "Heterogeneous"],
    surface=["Well-defined margin", "Ill-defined margin"],
)

# The paper's Table 1 writes "surrounding structures" where the PASTA template says "adjacent".
_SYNONYMS = (("surrounding", "adjacent"),)

Schema = Mapping[str, list]


class AttributeLabelError(ValueError):
    """An attribute table or schema that does not fit the dataset; the message names file, case and field."""


def canonical_class(value: str) -> str:
    """Case- and whitespace-insensitive form of a class string, with synonyms folded."""
    v = " ".join(str(value).strip().lower().split())
    for a, b in _SYNONYMS:
        v = v.replace(a, b)
    return v


def validate_schema(schema: Mapping, source: str = "schema") -> "OrderedDict[str, list[str]]":
    if not isinstance(schema, Mapping) or not schema:
        raise AttributeLabelError(f"{source}: the attribute schema must be a non-empty object "
                                  f"{{attribute: [class strings]}}, got {type(schema).__name__}")
    out: "OrderedDict[str, list[str]]" = OrderedDict()
    for name, classes in schema.items():
        if name in METADATA_KEYS:
            raise AttributeLabelError(f"{source}: '{name}' is reserved for metadata and cannot be an attribute")
        if not isinstance(classes, (list, tuple)) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            raise AttributeLabelError(f"{source}: attribute '{name}' must list at least two class strings, got {classes!r}")
        canon = [canonical_class(c) for c in classes]
        if len(set(canon)) != len(canon):
            raise AttributeLabelError(f"{source}: attribute '{name}' has duplicate classes {classes!r}")
        out[str(name)] = list(classes)
    return out


def schema_from_dataset_json(dataset_json: Mapping) -> "OrderedDict[str, list[str]]":
    """The report schema of a dataset: ``dataset.json["isrg"]["attributes"]`` or the paper's Table 1."""
    block = dataset_json.get("isrg", {}) or {}
    if "attributes" in block:
        return validate_schema(block["attributes"], "dataset.json['isrg']['attributes']")
    return OrderedDict((k, list(v)) for k, v in DEFAULT_SCHEMA.items())


def lesion_labels_from_dataset_json(dataset_json: Mapping) -> list[int]:
    """Label values that are lesions: ``dataset.json["isrg"]["lesion_labels"]``, default every foreground label."""
    block = dataset_json.get("isrg", {}) or {}
    if "lesion_labels" in block:
        return [int(v) for v in block["lesion_labels"]]
    out = []
    for name, value in dataset_json.get("labels", {}).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        out.extend(int(v) for v in values if int(v) != 0)
    return sorted(set(out))


def normalise_class(schema: Schema, attribute: str, value: str, case: str = "?", source: str = ATTRIBUTES_FILENAME) -> str:
    """The schema's spelling of ``value`` for ``attribute``; raises naming case, attribute and allowed values."""
    if attribute not in schema:
        raise AttributeLabelError(f"{source}: case '{case}' has unknown attribute '{attribute}'; "
                                  f"allowed attributes: {list(schema)} (and metadata {list(METADATA_KEYS)})")
    if not isinstance(value, str):
        raise AttributeLabelError(f"{source}: case '{case}', attribute '{attribute}': value must be a string, "
                                  f"got {value!r}; allowed values: {schema[attribute]}")
    lookup = {canonical_class(c): c for c in schema[attribute]}
    canon = canonical_class(value)
    if canon not in lookup:
        raise AttributeLabelError(f"{source}: case '{case}', attribute '{attribute}': unknown value '{value}'; "
                                  f"allowed values: {schema[attribute]}")
    return lookup[canon]


def validate_table(table: Mapping, schema: Schema, case_ids: Iterable[str] | None = None,
                   source: str = ATTRIBUTES_FILENAME) -> dict[str, dict[str, str]]:
    """Checks and normalises an attribute table; unknown case ids (when ``case_ids`` is given) are errors."""
    if not isinstance(table, Mapping):
        raise AttributeLabelError(f"{source}: must be a JSON object {{case_id: {{attribute: class}}}}, "
                                  f"got {type(table).__name__}")
    known = set(case_ids) if case_ids is not None else None
    out: dict[str, dict[str, str]] = {}
    for case, entry in table.items():
        if known is not None and case not in known:
            raise AttributeLabelError(f"{source}: unknown case id '{case}': it is not a case of the dataset "
                                      f"({len(known)} cases, e.g. {sorted(known)[:3]})")
        if not isinstance(entry, Mapping):
            raise AttributeLabelError(f"{source}: case '{case}' must map attributes to class strings, got {entry!r}")
        clean: dict[str, str] = {}
        for attribute, value in entry.items():
            if attribute in METADATA_KEYS:
                clean[attribute] = str(value)
                continue
            if value is None:  # explicit unknown
                continue
            clean[attribute] = normalise_class(schema, attribute, value, case, source)
        out[str(case)] = clean
    return out


def read_attribute_table(path: str | os.PathLike, schema: Schema,
                         case_ids: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
    path = Path(path)
    try:
        with open(path) as f:
            table = json.load(f)
    except FileNotFoundError:
        raise AttributeLabelError(f"{path}: attribute table not found") from None
    except json.JSONDecodeError as e:
        raise AttributeLabelError(f"{path}: malformed JSON ({e})") from None
    return validate_table(table, schema, case_ids, source=str(path))


def encode_case(entry: Mapping[str, str] | None, schema: Schema) -> np.ndarray:
    """Class indices of one case in schema order, ``IGNORE_INDEX`` where unknown. Shape (n_attributes,)."""
    out = np.full(len(schema), IGNORE_INDEX, dtype=np.int64)
    if entry:
        for i, (name, classes) in enumerate(schema.items()):
            if name in entry:
                out[i] = classes.index(normalise_class(schema, name, entry[name]))
    return out


def decode_case(indices: Iterable[int], schema: Schema) -> dict[str, str]:
    """Inverse of :func:`encode_case`; unknown entries are left out."""
    return {name: classes[int(i)] for (name, classes), i in zip(schema.items(), indices) if int(i) != IGNORE_INDEX}


def schema_num_classes(schema: Schema) -> "OrderedDict[str, int]":
    return OrderedDict((k, len(v)) for k, v in schema.items())


#: fewer labelled training cases than this and an attribute's predictions carry a "low support" flag
LOW_SUPPORT_CASES = 20
#: checkpoint key (and, as ``attribute_support.json``, fold-folder sidecar) of {attribute: labelled
#: training cases}; written by the trainer, read by the model loader
ATTRIBUTE_SUPPORT_KEY = "isrg_attribute_support"
ATTRIBUTE_SUPPORT_FILENAME = "attribute_support.json"
#: the same for {attribute: {class: labelled training cases}} (:func:`attribute_class_counts`)
ATTRIBUTE_CLASS_COUNTS_KEY = "isrg_attribute_class_counts"
ATTRIBUTE_CLASS_COUNTS_FILENAME = "attribute_class_counts.json"


def attribute_support(class_counts: Mapping[str, Mapping[str, int]]) -> "OrderedDict[str, int]":
    """Labelled cases per attribute, from :func:`attribute_class_counts`: what a model trained on
    those cases learnt each attribute from (0 = never trained)."""
    return OrderedDict((name, sum(counts.values())) for name, counts in class_counts.items())


def attribute_class_counts(table: Mapping[str, Mapping[str, str]], schema: Schema,
                           case_ids: Iterable[str]) -> "OrderedDict[str, dict[str, int]]":
    """How many of ``case_ids`` carry each class of each attribute of ``schema`` in ``table``: the
    prevalence a model trained on those cases learnt (:func:`balanced_probabilities` divides it out)."""
    cases = list(case_ids)
    return OrderedDict((name, {c: sum(1 for k in cases if (table.get(k) or {}).get(name) == c) for c in classes})
                       for name, classes in schema.items())


def balanced_probabilities(probs: Mapping[str, float], class_counts: Mapping[str, int] | None) -> dict[str, float]:
    """An attribute's class probabilities as if every class had been equally common in training: each
    divided by its training prevalence (add-one smoothed) and renormalised (Saerens et al., Neural
    Computation 2002; the logit adjustment of Menon et al., ICLR 2021). Its most probable class is the
    decision that maximises balanced accuracy, so a rare finding (a spiculated or lobulated nodule)
    is not outvoted by its rarity. A class no training case had keeps the prevalence of equal classes
    (1 / classes): its small softmax output is no learnt evidence, and dividing it by a near-zero
    prevalence would name a class the model never saw. Without counts, or none labelled, the
    probabilities are returned as they are."""
    if not class_counts or sum(int(class_counts.get(c, 0)) for c in probs) == 0:
        return dict(probs)
    total = sum(int(class_counts.get(c, 0)) + 1 for c in probs)
    prevalence = {c: (n + 1) / total if (n := int(class_counts.get(c, 0))) > 0 else 1 / len(probs)
                  for c in probs}
    weighted = {c: float(p) / prevalence[c] for c, p in probs.items()}
    norm = sum(weighted.values())
    return {c: v / norm for c, v in weighted.items()} if norm > 0 else dict(probs)


def untrained_attributes(support: Mapping[str, int] | None) -> list[str]:
    """The attributes a model has no training label for; none when its support is not recorded
    (a checkpoint written before the record existed is treated as trained)."""
    return [name for name, n in (support or {}).items() if int(n) == 0]
