"""The HTTP API by resource, one :class:`fastapi.APIRouter` per module; ``create_app`` includes them
behind the token check (all but :mod:`.page`, which is open).

Endpoints that answer with JSON carry no return annotation on purpose: FastAPI would take it as the
response model, which changes the OpenAPI schema and sends every answer through validation.
Endpoints state the shared state they need as a parameter ``state: ServerStateDep``.
"""
