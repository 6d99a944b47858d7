"""The server's shared state: one :class:`ServerState` per app, kept on ``app.state.server``.

Endpoints get it through the dependency :data:`ServerStateDep` (a parameter ``state:
ServerStateDep``), so nothing is captured in closures and every router module can be imported on
its own.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from nnunet_isrg.inference.model_loading import LoadedModel
from nnunet_isrg.server.memory import MemoryBudget
from nnunet_isrg.server.sessions import SessionStore


@dataclass(frozen=True)
class ServerState:
    """What every request of one app shares: the sessions, the one loaded model and the limits."""

    store: SessionStore
    model: LoadedModel
    #: folders whose files (and only those) may be opened by path, resolved
    data_roots: list[Path]
    #: upload size limit in bytes
    max_upload: int
    #: the token every API request must carry; None: no token needed
    token: str | None
    #: what the sessions' images may hold, per session and in all
    budget: MemoryBudget
    #: DICOM SEG + SR exports run one at a time: their transient peak is beyond the budget's estimate
    dicom_export_slot: threading.Lock = field(default_factory=threading.Lock)

    @property
    def schema(self) -> dict[str, list[str]]:
        """The model's report schema: attribute -> its classes."""
        return {k: list(v) for k, v in self.model.schema.items()}


def get_state(request: Request) -> ServerState:
    """The state of the app that received ``request`` (a FastAPI dependency)."""
    return request.app.state.server


ServerStateDep = Annotated[ServerState, Depends(get_state)]
