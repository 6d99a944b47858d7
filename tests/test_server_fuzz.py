"""The HTTP API fuzzed against its own OpenAPI schema with schemathesis, in process (ASGI), on the
click-driven stand-in network: no generated request may get a server error (5xx).

One test per API operation: schemathesis' explicit examples, its coverage phase (boundary values,
wrong types, missing fields) and ``EXAMPLES`` generated requests, schema-conforming and not.
Requests that name a session get, most of the time, a ready one (a phantom case open, one lesion
clicked), so that the fuzzer reaches the image, lesion, report and export code, not only the
"unknown session" answer. About 600 requests in 15 to 25 s on two shared CPU cores, once the debug model
is trained.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the test extras)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from nnunet_isrg.inference.model_loading import LoadedModel  # noqa: E402
from nnunet_isrg.server.app import create_app  # noqa: E402

#: generated requests per API operation (hypothesis' max_examples), on top of the coverage phase's
EXAMPLES = 10
#: an operation whose requests take a second each gets the ready session for this many of them only
SLOW_OPERATIONS = {"GET /sessions/{sid}/export/dicom.zip": 2}
#: the fuzzer's client: the header a state-changing request needs (see test_server_safety.py)
HEADERS = {"X-ISRG-Client": "fuzz"}
#: requests the app received, set-up included (the last test checks the fuzzing was not a no-op)
SENT = {"requests": 0}


def _schema_app():
    """The API's routes with no model behind them: the OpenAPI schema does not depend on the model, and
    collecting the tests must not wait for the debug model's training. Requests go to ``fuzz_app``."""
    no_model = LoadedModel(folder=Path("."), plans_manager=None, configuration_manager=None, dataset_json={},
                           schema=OrderedDict(), network=None, folds=[0], device=torch.device("cpu"))
    return create_app(no_model, allowed_hosts=["testserver"])


schema = schemathesis.openapi.from_asgi("/openapi.json", _schema_app())


@pytest.fixture(scope="module")
def fuzz_app(debug_model, phantom_raw):
    from stand_ins import stand_in_model

    torch.set_num_threads(1)
    # schemathesis' ASGI client sends Host: testserver; as many sessions as the fuzzer may make
    return create_app(stand_in_model(debug_model), data_dirs=[phantom_raw], allowed_hosts=["testserver"],
                      max_upload_mb=1, max_sessions=100_000)


@pytest.fixture(scope="module")
def fuzz_asgi(fuzz_app):
    """``fuzz_app`` without its lifespan: schemathesis ends an app's lifespan after each test, which would
    close the store (the server stopping) under the module's later tests."""
    async def asgi(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # raised before any message: "not supported"
        SENT["requests"] += 1
        await fuzz_app(scope, receive, send)
    return asgi


@pytest.fixture(scope="module")
def phantom_case(phantom_raw) -> dict:
    import SimpleITK as sitk

    img = sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    shape = sitk.ReadImage(str(img)).GetSize()[::-1]
    return {"rel": img.relative_to(phantom_raw).as_posix(), "point": [int(s) // 2 for s in shape]}


class ReadySession:
    """One operation's session with the phantom case open and lesion 1 clicked, made (again) through the
    API whenever a request deleted it or opened something that failed."""

    def __init__(self, app, case: dict):
        self.app, self.case, self._sid, self.uses = app, case, None, 0

    def sid(self) -> str:
        self.uses += 1
        store = self.app.state.store
        if self._sid is None or self._sid not in store.ids() or store.get(self._sid).status != "ready":
            c = TestClient(self.app, headers=HEADERS)
            self._sid = c.post("/sessions").json()["session_id"]
            r = c.post(f"/sessions/{self._sid}/open", params={"wait": True}, json={"path": self.case["rel"]})
            assert r.status_code == 200, r.text
            assert c.post(f"/sessions/{self._sid}/clicks", json={"point": self.case["point"]}).status_code == 200
        return self._sid

    def close(self) -> None:
        if self._sid is not None and self._sid in self.app.state.store.ids():
            self.app.state.store.delete(self._sid)


@pytest.fixture()
def ready(fuzz_app, phantom_case):
    session = ReadySession(fuzz_app, phantom_case)
    yield session
    session.close()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case, fuzz_asgi, ready):
    params = case.path_parameters or {}
    # a generated id whose length is a multiple of 4 stays (the unknown-session answer is fuzzed too)
    slow_limit = SLOW_OPERATIONS.get(case.operation.label)
    use_ready = slow_limit is None or ready.uses < slow_limit
    if isinstance(params.get("sid"), str) and len(params["sid"]) % 4 and use_ready:
        params["sid"] = ready.sid()
        if isinstance(params.get("lid"), int) and not isinstance(params["lid"], bool):
            params["lid"] = params["lid"] % 3  # 1: the clicked lesion; 0 and 2: none
    case.call_and_validate(app=fuzz_asgi, headers=HEADERS, checks=[not_a_server_error])


def test_the_fuzzer_sent_its_requests():
    # runs after the fuzzing above (file order): every operation had its examples sent
    operations = sum(len(methods) for methods in schema.raw_schema["paths"].values())
    assert operations >= 20 and SENT["requests"] >= operations * EXAMPLES, (operations, SENT)
