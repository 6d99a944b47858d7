"""The JSON the API answers with for a session, its image, its lesions and a lesion's report."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnunet_isrg.files import json_safe
from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.report.render_text import render_markdown, render_text
from nnunet_isrg.server.errors import http_error
from nnunet_isrg.server.sessions import SessionEntry
from nnunet_isrg.server.slices import lesion_colour, plane_geometry, window_presets


def lesion_json(session: ISRGSession, lid: int) -> dict:
    """One lesion: clicks, size, bounding box and the model's most likely class of each attribute."""
    st = session.state(lid)
    voxel_ml = float(np.prod(session.spacing_zyx)) / 1000.0
    model_attrs = {name: {"value": max(p, key=p.get), "probability": p[max(p, key=p.get)]}
                   for name, p in st.attribute_probs.items() if p}
    return json_safe({
        "lesion_id": st.lesion_id, "current": st.lesion_id == session.current_lesion_id,
        "colour": "#%02x%02x%02x" % lesion_colour(st.lesion_id, session.current_lesion_id),
        "n_clicks": len(st.clicks), "clicks": [c.to_dict() for c in st.clicks], "prompts": st.prompts,
        "n_voxels": st.n_voxels, "volume_ml": st.n_voxels * voxel_ml,
        "bbox_zyx": [[s.start, s.stop] for s in st.bbox] if st.bbox is not None else None,
        "iou_pred": st.iou_pred, "model_attributes": model_attrs,
    })


def lesions_json(session: ISRGSession) -> list[dict]:
    """Every lesion of the session, the current one included even while it is still empty."""
    ids = list(session.lesion_ids)
    if session.current_lesion_id not in ids:
        ids.append(session.current_lesion_id)
    return [lesion_json(session, lid) for lid in ids]


def image_json(entry: SessionEntry) -> dict:
    """The open image: geometry, HU range, plane geometry and window presets."""
    s: ISRGSession = entry.session
    arr = sitk.GetArrayViewFromImage(s.image)
    return json_safe({
        "name": entry.image_name, "shape_zyx": list(s.image_shape), "spacing_zyx": list(s.spacing_zyx),
        "origin_xyz": list(s.image.GetOrigin()), "direction": list(s.image.GetDirection()),
        "hu_range": [float(arr.min()), float(arr.max())], "planes": plane_geometry(s.image_shape, s.spacing_zyx),
        "windows": window_presets(), "dicom": s.dicom_datasets is not None,
    })


def session_json(entry: SessionEntry, detail: bool = True) -> dict:
    """The session's status; with ``detail`` and an image, also the image and the lesions (call with the
    entry's lock held then)."""
    out = {"session_id": entry.sid, "status": entry.status, "message": entry.message,
           "revision": entry.revision, "image": None, "current_lesion": None, "lesions": None}
    if detail and entry.status == "ready":
        out.update(image=image_json(entry), current_lesion=entry.session.current_lesion_id,
                   lesions=lesions_json(entry.session))
    return out


def report_json(session: ISRGSession, lid: int) -> dict:
    """A lesion's structured report with its text and Markdown renderings; 409 while it has no mask."""
    st = session.state(lid)
    if st.n_voxels == 0:
        raise http_error(409, f"lesion {lid} has no mask yet (clicks: {len(st.clicks)}); add a positive click on it")
    rep = session.report(lid)
    return json_safe({"lesion_id": lid, "report": rep.to_dict(), "text": render_text(rep),
                      "markdown": render_markdown(rep)})
