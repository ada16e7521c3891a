"""GET /v1/models and /v1/models/{model}: the public model names from the config."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.responses import json_response
from gateway.openai_types import ModelCard, ModelList
from gateway.runtime import Runtime


def _card(name: str, rt: Runtime) -> ModelCard:
    return {"id": name, "object": "model", "created": int(rt.started), "owned_by": "gateway"}


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    listing: ModelList = {"object": "list", "data": [_card(m, rt) for m in rt.routes.models]}
    return json_response(listing)


async def retrieve_model(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    name: str = request.path_params["model"]
    rt.routes.chain_for(name)  # ModelNotFound
    return json_response(_card(name, rt))
