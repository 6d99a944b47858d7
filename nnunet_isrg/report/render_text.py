"""Text (paper/PASTA template) and Markdown renderings of a :class:`LesionReport`.

Template phrasing, one phrase per attribute in schema order, joined by "; " and ended with ".":

- shape: "<shape> mass" ("Round-like mass", "Irregular mass"), except "Wall thickening" (a finding
  of its own, kept as is) and "Punctate, nodular" -> "Punctate, nodular lesion" (a punctate thing is
  not a mass);
- invasion, heterogeneity, surface: the class as is;
- density: "<density> lesion" ("Hypodense lesion");
- any other attribute (custom schemas): the class as is.

An attribute that is unknown (neither predicted nor set by the reader) is left out.
"""
from __future__ import annotations

from typing import Iterable

from nnunet_isrg.attributes import canonical_class
from nnunet_isrg.report.structured import LesionReport

_SHAPE_PHRASES = {"wall thickening": "Wall thickening", "punctate, nodular": "Punctate, nodular lesion"}


def attribute_phrase(name: str, value: str) -> str:
    """The template phrase of one attribute value (see module docstring)."""
    if name == "shape":
        return _SHAPE_PHRASES.get(canonical_class(value), f"{value} mass")
    if name == "density":
        return f"{value} lesion"
    return value


def render_text(report: LesionReport) -> str:
    """One sentence in the paper's template, e.g. "Round-like mass; ...; Well-defined margin.", of the
    model's and the reader's findings only: measured descriptors and attributes the model was not
    trained on are not findings."""
    phrases = [attribute_phrase(name, f.value) for name, f in report.findings().items()]
    return "; ".join(phrases) + "." if phrases else ""


def _source_cell(f) -> str:
    """What the Source column says: who stated the class, and how well the model knows the attribute."""
    if f.source == "reader" and f.model is not None:
        return f"reader (model: {f.model.value}, p={f.model.probability:.2f})"
    if f.source in ("measurement", "not assessed"):
        return f.reason or f.source
    if f.low_support:
        return f"{f.source} (low support: {f.training_cases} labelled training cases)"
    return f.source


def _num(v, nd: int = 1, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}{(' ' + unit) if unit else ''}"


def _vec(v, nd: int = 1) -> str:
    return "(" + ", ".join(f"{x:.{nd}f}" for x in v) + ")"


def render_markdown(report: LesionReport, key_image: str | None = None, heading_level: int = 3) -> str:
    """Markdown: summary sentence, attribute table (probability, source), measurements, evidence, clicks."""
    h = "#" * heading_level
    m = report.measurements
    r = m["recist"]
    hu = m["hu"]
    shell = m.get("shell", {})
    loc = report.location
    lines = [f"{h} Lesion {report.lesion_id}" + (f" ({report.lesion_type})" if report.lesion_type else ""), ""]
    text = render_text(report)
    if text:
        lines += [f"**{text}**", ""]
    if key_image:
        lines += [f"![key image of lesion {report.lesion_id}]({key_image})", ""]

    lines += ["| Attribute | Finding | Probability | Source |", "|---|---|---|---|"]
    for name, f in report.attributes.items():
        prob = f"{f.probability:.2f}" if f.probability is not None else "-"
        value = f.value if f.value is not None else "not assessed"
        if f.source == "measurement":
            value = f"{f.value} (measured)"
        lines.append(f"| {name} | {value} | {prob} | {_source_cell(f)} |")
    lines.append("")

    ext = m["extents_mm"]
    lines += ["| Measurement | Value |", "|---|---|",
              f"| Volume | {_num(m['volume_ml'], 2, 'mL')} ({m['n_voxels']} voxels) |",
              f"| RECIST long axis | {_num(r['long_axis_mm'], 1, 'mm')} (slice {r['slice_index']}) |",
              f"| RECIST short axis | {_num(r['short_axis_mm'], 1, 'mm')} |",
              f"| Extents x / y / z | {ext['x']:.1f} / {ext['y']:.1f} / {ext['z']:.1f} mm |",
              f"| HU mean ± std | {hu['mean']:.1f} ± {hu['std']:.1f} HU |",
              f"| HU min / max | {hu['min']:.0f} / {hu['max']:.0f} HU |",
              f"| Surrounding tissue (shell) | {_num(shell.get('mean_hu'), 1, 'HU')} |",
              f"| Density contrast | {_num(shell.get('contrast_hu'), 1, 'HU')} |",
              f"| Centroid (world x, y, z) | {_vec(loc['centroid_world_xyz'])} mm |"]
    if loc.get("organ") is not None or "organ_overlap" in loc:
        lines.append(f"| Organ | {loc.get('organ') or 'none'} |")
    lines.append("")

    ev = [(name, e) for name, f in report.attributes.items() for e in f.evidence]
    if ev:
        lines += ["Evidence:", ""]
        lines += [f"- {name} ({report.attributes[name].value}): {e.text} — {e.verdict}" for name, e in ev]
        lines.append("")
    if report.clicks:
        lines += ["Clicks:", ""]
        lines += [f"{i}. {'positive' if c.positive else 'negative'} at voxel (z, y, x) {_vec(c.voxel_zyx)}, "
                  f"world (x, y, z) {_vec(c.world_xyz)} mm" for i, c in enumerate(report.clicks, 1)]
        lines.append("")
    return "\n".join(lines)


def render_markdown_document(reports: Iterable[LesionReport], title: str = "Structured lesion report",
                             key_images: dict | None = None) -> str:
    """All lesions of one image in one Markdown document."""
    key_images = key_images or {}
    parts = [f"# {title}", ""]
    for rep in reports:
        parts.append(render_markdown(rep, key_images.get(rep.lesion_id), heading_level=2))
    return "\n".join(parts)
