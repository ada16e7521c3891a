"""GET /v1/models and /v1/models/{model}: the public model names from the config.

With client keys configured, both need a key (401 as the chat endpoint answers), and a key sees
only the models its globs allow: the list leaves the others out, and asking for one of them is
the 403 the chat endpoint would give (decided before whether it exists, which stays unsaid).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.responses import json_response
from gateway.auth import Caller
from gateway.openai_types import ModelCard, ModelList
from gateway.runtime import Runtime


def _card(name: str, rt: Runtime) -> ModelCard:
    return {"id": name, "object": "model", "created": int(rt.started), "owned_by": "gateway"}


def _caller(request: Request, rt: Runtime) -> Caller | None:
    """The request's client key (None without auth.keys); raises InvalidApiKey (401)."""
    return None if rt.keys is None else rt.keys.lookup(request.scope["headers"])


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    caller = _caller(request, rt)
    names = [m for m in rt.routes.models if caller is None or caller.may_use(m)]
    listing: ModelList = {"object": "list", "data": [_card(m, rt) for m in names]}
    return json_response(listing)


async def retrieve_model(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    caller = _caller(request, rt)
    name: str = request.path_params["model"]
    if caller is not None:
        caller.check_model(name)  # ModelNotAllowed
    rt.routes.chain_for(name)  # ModelNotFound
    return json_response(_card(name, rt))
