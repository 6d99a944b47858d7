"""A session's lesions: clicks and other prompts (boxes, scribbles, lassos) on the current lesion,
undo/reset, new and earlier lesions, a lesion's report and the reader's attribute overrides."""
from __future__ import annotations

import logging
from typing import Annotated, Literal, Optional, Union

import anyio.from_thread
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.server.access import known_lesion, ready_session
from nnunet_isrg.server.errors import http_error
from nnunet_isrg.server.sessions import SessionEntry
from nnunet_isrg.server.state import ServerState, ServerStateDep
from nnunet_isrg.server.views import lesion_json, lesions_json, report_json

router = APIRouter()
log = logging.getLogger("nnunet_isrg.server")

#: answer to a request whose client left before it was applied (nobody reads it; nginx's code for this)
CLIENT_GONE = 499


class ClickRequest(BaseModel):
    # strict: "yes" is not a boolean, and a boolean or a string is not a coordinate (JSON integers are numbers)
    model_config = ConfigDict(strict=True)

    point: list[StrictFloat] = Field(..., min_length=3, max_length=3,
                                     description="voxel: (z, y, x) index of the image; world: (x, y, z) mm, LPS")
    positive: StrictBool = Field(True, description="true = this is lesion, false = this is not")
    space: Literal["voxel", "world"] = "voxel"


Point3 = Annotated[list[StrictFloat], Field(min_length=3, max_length=3)]
Point2 = Annotated[list[StrictFloat], Field(min_length=2, max_length=2)]


class BoxPrompt(BaseModel):
    model_config = ConfigDict(strict=True)

    kind: Literal["box"]
    corners: list[Point3] = Field(..., min_length=2, max_length=2,
                                  description="two opposite corners, in `space`; on one slice: a 2D box")
    positive: StrictBool = Field(True, description="false: the box's voxels are not lesion")
    space: Literal["voxel", "world"] = "voxel"


class ScribblePrompt(BaseModel):
    model_config = ConfigDict(strict=True)

    kind: Literal["scribble"]
    points: list[Point3] = Field(..., min_length=1, max_length=10000, description="the stroke's points, in `space`")
    positive: StrictBool = True
    space: Literal["voxel", "world"] = "voxel"


class LassoPrompt(BaseModel):
    model_config = ConfigDict(strict=True)

    kind: Literal["lasso"]
    slice_axis: Literal["z", "y", "x"] = Field(..., description="z axial, y coronal, x sagittal (image voxel axes)")
    slice_index: StrictInt
    polygon: list[Point2] = Field(..., min_length=3, max_length=10000,
                                  description="in-plane voxel coordinates, in the order of the two other axes")
    positive: StrictBool = True


PromptRequest = Annotated[Union[BoxPrompt, ScribblePrompt, LassoPrompt], Field(discriminator="kind")]


class AttributeOverride(BaseModel):
    model_config = ConfigDict(strict=True)

    value: Optional[StrictStr] = Field(..., description="a class of the attribute (GET /info: schema), or null to "
                                                  "remove the reader's override and report the model's class")


def _changed(entry: SessionEntry, session: ISRGSession, lid: int) -> dict:
    """Records a change of lesion ``lid`` (new revision: the overlay's cache is stale) and answers with it."""
    entry.changed()
    return {"revision": entry.revision, "lesion": lesion_json(session, lid)}


def _apply_prompt(state: ServerState, sid: str, prompt: dict, request: Request) -> dict:
    """Runs in a worker thread: waits for the session, then applies the prompt unless its client left
    meanwhile (a reader who clicked, then closed the tab, must not find a lesion changed by it)."""
    with ready_session(state.store, sid) as (entry, session):
        if anyio.from_thread.run(request.is_disconnected):
            log.info("session %s: a %s whose client disconnected before it was applied was dropped", sid[:8],
                     prompt["kind"])
            raise http_error(CLIENT_GONE, f"the client disconnected before the {prompt['kind']} was applied; "
                                          f"it was dropped")
        st = session.add_prompt(prompt, space=prompt.get("space", "voxel"))
        return _changed(entry, session, st.lesion_id)


@router.post("/sessions/{sid}/clicks", summary="Add a positive or negative click to the current lesion")
async def add_click(sid: str, req: ClickRequest, request: Request, state: ServerStateDep):
    # asking once now makes the server watch the connection while the click waits for the session's lock
    # (it stops reading a connection whose request is complete), so a client that leaves is noticed
    await request.is_disconnected()
    return await run_in_threadpool(_apply_prompt, state, sid, {"kind": "click", **req.model_dump()}, request)


@router.post("/sessions/{sid}/prompts", summary="Add a box, a scribble or a lasso to the current lesion")
async def add_prompt(sid: str, req: PromptRequest, request: Request, state: ServerStateDep):
    await request.is_disconnected()   # see add_click
    return await run_in_threadpool(_apply_prompt, state, sid, req.model_dump(), request)


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
