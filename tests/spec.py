"""Check wire bodies against OpenAI's published schemas, and read SSE streams the way a client does.

The schemas are the subset of OpenAI's OpenAPI spec copied into `tests/data/openai_schemas.json`
by `tests/data/extract_schemas.py` (regenerate it there, never by hand). They keep the spec's
`#/components/schemas/<Name>` layout, so the document is registered once in a
`referencing.Registry` and every name is validated through a `$ref` into it (JSON Schema 2020-12).
Format keywords (`unixtime`, `uri`) are not asserted, JSON Schema's default.

`validate()` checks one body; `validate_stream()` parses an SSE body, checks every chunk and the
invariants OpenAI's stream keeps across chunks; `assemble()` folds chunks back into choices.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import relevance
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMAS_PATH = Path(__file__).parent / "data" / "openai_schemas.json"
# Any absolute URI will do: it only names the document inside the registry.
DOCUMENT_URI = "urn:openai:openapi"
MAX_ERRORS = 5
_SSE_LINE_END = re.compile(r"\r\n|\r|\n")
MAX_MESSAGE = 300


@functools.cache
def _document() -> dict[str, Any]:
    with SCHEMAS_PATH.open(encoding="utf-8") as file:
        document: dict[str, Any] = json.load(file)
    return document


def schema_names() -> list[str]:
    """Every schema in the extracted file (the roots and what they reference)."""
    return sorted(_document()["components"]["schemas"])


@functools.cache
def _registry() -> Registry[Any]:
    resource = Resource.from_contents(_document(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
    return registry


@functools.cache
def _validator(schema_name: str) -> Any:
    if schema_name not in _document()["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {SCHEMAS_PATH.name}")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"{DOCUMENT_URI}#/components/schemas/{schema_name}",
    }
    return Draft202012Validator(schema, registry=_registry())


def _shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: Any, indent: str = "  ") -> str:
    line = f"{indent}{error.json_path}: {_shorten(error.message)}"
    if not error.context:
        return line
    # anyOf/oneOf: "not valid under any" says little; show the branch that came closest, the one
    # with the fewest errors (ties: the deepest), e.g. the function tool call missing `arguments`
    # rather than the custom one.
    branches: dict[object, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    closest = min(
        branches.values(),
        key=lambda subs: (len(subs), -max(len(sub.absolute_path) for sub in subs)),
    )
    details = [_describe(sub, indent + "    ") for sub in sorted(closest, key=relevance)]
    return "\n".join([line, f"{indent}  closest branch:", *details[:MAX_ERRORS]])


def errors(schema_name: str, instance: object) -> list[str]:
    """Readable descriptions of how `instance` breaks `schema_name`, most relevant first."""
    found = sorted(_validator(schema_name).iter_errors(instance), key=relevance)
    return [_describe(error) for error in found]


def validate(schema_name: str, instance: object) -> None:
    """Raise `AssertionError` naming the first few errors when `instance` is not valid.

    Raises `KeyError` for a schema name that is not in the extracted file.
    """
    found = errors(schema_name, instance)
    if not found:
        return
    shown = "\n".join(found[:MAX_ERRORS])
    more = f"\n  ... and {len(found) - MAX_ERRORS} more" if len(found) > MAX_ERRORS else ""
    body = _shorten(json.dumps(instance, default=repr), 2000)
    raise AssertionError(
        f"not a valid {schema_name} ({len(found)} error(s)):\n{shown}{more}\ninstance: {body}"
    )


def sse_data(body: str | bytes | Iterable[str]) -> list[str]:
    """The `data` of each event in an SSE body (or its lines), in order.

    Follows the SSE rules a client follows: events end at a blank line, `:` lines are comments,
    several `data:` lines of one event join with a newline, one space after the colon is
    dropped, and an event the body ends in the middle of (no blank line yet) is discarded.

    Pass the whole body rather than httpx's `iter_lines()` when the data may hold U+2028 or
    U+0085 unescaped (orjson writes them raw): `iter_lines()` splits lines like
    `str.splitlines()`, at those too, while SSE lines end only at CR, LF or CRLF.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    lines = _SSE_LINE_END.split(body) if isinstance(body, str) else body
    events: list[str] = []
    data: list[str] | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data is not None:
                events.append("\n".join(data))
            data = None
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data = [*(data or []), value.removeprefix(" ")]
    return events


def validate_stream(
    body: str | bytes | Iterable[str], *, expect_done: bool = True
) -> list[dict[str, Any]]:
    """Parse an SSE chat stream, check it as an OpenAI client would, and return its JSON events.

    Every event must be a `CreateChatCompletionStreamResponse`, or an `ErrorResponse` (the
    mid-stream error OpenAI and the gateway send). Across chunks: one `id`, `created` and
    `model`; with `stream_options.include_usage`, every chunk carries `usage` and only the last
    one of a complete stream, with `choices: []`, is not null. The stream ends with
    `data: [DONE]` unless `expect_done` is false, and nothing follows it. Raises
    `AssertionError`.
    """
    datas = sse_data(body)
    done = bool(datas) and datas[-1] == "[DONE]"
    if expect_done:
        assert done, f"stream does not end with data: [DONE] (last events: {datas[-3:]!r})"
    else:
        assert not done, "stream ends with data: [DONE] but was expected to break off"
    payloads = datas[:-1] if done else datas
    assert "[DONE]" not in payloads, "data: [DONE] is not the last event"
    events: list[dict[str, Any]] = []
    for position, data in enumerate(payloads):
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"event {position} is not JSON: {_shorten(data)!r}") from exc
        assert isinstance(event, dict), f"event {position} is not an object: {_shorten(data)!r}"
        validate(
            "ErrorResponse" if "error" in event else "CreateChatCompletionStreamResponse", event
        )
        events.append(event)
    chunks = [event for event in events if "error" not in event]
    for key in ("id", "created", "model"):
        values = {chunk[key] for chunk in chunks}
        assert len(values) <= 1, f"chunks disagree on {key!r}: {sorted(map(str, values))}"
    if any("usage" in chunk for chunk in chunks):
        *others, last = chunks
        assert all("usage" in chunk and chunk["usage"] is None for chunk in others), (
            "with include_usage every chunk but the last has usage: null"
        )
        if done and len(chunks) == len(events):
            assert last.get("usage") is not None, "with include_usage the last chunk has usage"
            assert last["choices"] == [], "the usage chunk has choices: []"
    return events


def assemble(chunks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold stream chunks into choices the way the OpenAI SDK does, ordered by index.

    Each choice is `{"index", "role", "content", "refusal", "tool_calls", "finish_reason"}`:
    content and refusal concatenated (None if never sent), tool calls merged by their `index`
    with `arguments` concatenated. Error events and the usage chunk are skipped.
    """
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices", []):
            into = choices.setdefault(
                choice["index"],
                {
                    "index": choice["index"],
                    "role": None,
                    "content": None,
                    "refusal": None,
                    "tool_calls": [],
                    "finish_reason": None,
                },
            )
            delta = choice.get("delta") or {}
            if delta.get("role"):
                into["role"] = delta["role"]
            for key in ("content", "refusal"):
                if delta.get(key) is not None:
                    into[key] = (into[key] or "") + delta[key]
            for call in delta.get("tool_calls") or []:
                calls: list[dict[str, Any]] = into["tool_calls"]
                while len(calls) <= call["index"]:
                    calls.append(
                        {"id": None, "type": None, "function": {"name": "", "arguments": ""}}
                    )
                merged = calls[call["index"]]
                merged["id"] = call.get("id") or merged["id"]
                merged["type"] = call.get("type") or merged["type"]
                function = call.get("function") or {}
                merged["function"]["name"] += function.get("name") or ""
                merged["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                into["finish_reason"] = choice["finish_reason"]
    return [choices[index] for index in sorted(choices)]
