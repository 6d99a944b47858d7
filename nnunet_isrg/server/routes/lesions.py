"""A session's lesions: clicks on the current lesion, undo/reset, new and earlier lesions, a lesion's
report and the reader's attribute overrides."""
from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter
from pydantic import BaseModel, Field

from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.server.access import known_lesion, ready_session
from nnunet_isrg.server.sessions import SessionEntry
from nnunet_isrg.server.state import ServerStateDep
from nnunet_isrg.server.views import lesion_json, lesions_json, report_json

router = APIRouter()


class ClickRequest(BaseModel):
    point: list[float] = Field(..., min_length=3, max_length=3,
                               description="voxel: (z, y, x) index of the image; world: (x, y, z) mm, LPS")
    positive: bool = Field(True, description="true = this is lesion, false = this is not")
    space: Literal["voxel", "world"] = "voxel"


class AttributeOverride(BaseModel):
    value: Optional[str] = Field(..., description="a class of the attribute (GET /info: schema), or null to "
                                                  "remove the reader's override and report the model's class")


def _changed(entry: SessionEntry, session: ISRGSession, lid: int) -> dict:
    """Records a change of lesion ``lid`` (new revision: the overlay's cache is stale) and answers with it."""
    entry.changed()
    return {"revision": entry.revision, "lesion": lesion_json(session, lid)}


@router.post("/sessions/{sid}/clicks", summary="Add a positive or negative click to the current lesion")
def add_click(sid: str, req: ClickRequest, state: ServerStateDep):
    with ready_session(state.store, sid) as (entry, session):
        st = session.add_click(req.point, positive=req.positive, space=req.space)
        return _changed(entry, session, st.lesion_id)


@router.post("/sessions/{sid}/undo", summary="Take back the current lesion's last click (or reset)")
def undo(sid: str, state: ServerStateDep):
    with ready_session(state.store, sid) as (entry, session):
        return _changed(entry, session, session.undo().lesion_id)


@router.post("/sessions/{sid}/reset", summary="Clear the current lesion's clicks and mask (undo restores)")
def reset(sid: str, state: ServerStateDep):
    with ready_session(state.store, sid) as (entry, session):
        return _changed(entry, session, session.reset().lesion_id)


@router.post("/sessions/{sid}/lesions", status_code=201, summary="Start a new lesion (the others are kept)")
def new_lesion(sid: str, state: ServerStateDep):
    with ready_session(state.store, sid) as (entry, session):
        return _changed(entry, session, session.new_lesion())


@router.get("/sessions/{sid}/lesions", summary="All lesions of the session (the current one included)")
def list_lesions(sid: str, state: ServerStateDep):
    with ready_session(state.store, sid) as (entry, session):
        return {"revision": entry.revision, "current_lesion": session.current_lesion_id,
                "lesions": lesions_json(session)}


@router.post("/sessions/{sid}/lesions/{lid}/select", summary="Make an earlier lesion current, to correct it")
def select_lesion(sid: str, lid: int, state: ServerStateDep):
    with ready_session(state.store, sid) as (entry, session):
        session.select_lesion(known_lesion(session, lid))
        return _changed(entry, session, lid)


@router.get("/sessions/{sid}/lesions/{lid}/report",
            summary="A lesion's structured report (JSON: attributes with probability and source, "
                    "measurements, location, clicks, evidence) with its text and Markdown renderings")
def get_report(sid: str, lid: int, state: ServerStateDep):
    with ready_session(state.store, sid) as (_, session):
        return report_json(session, known_lesion(session, lid))


@router.put("/sessions/{sid}/lesions/{lid}/attributes/{name}",
            summary="Reader override of one attribute (value null removes it); returns the new report")
def override_attribute(sid: str, lid: int, name: str, req: AttributeOverride, state: ServerStateDep):
    with ready_session(state.store, sid) as (_, session):
        session.set_attribute(known_lesion(session, lid), name, req.value)
        return report_json(session, lid)
