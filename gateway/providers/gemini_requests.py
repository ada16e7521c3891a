"""OpenAI's chat request in Gemini's shape: messages as `contents` and `systemInstruction`, tools
and `tool_choice` as `functionDeclarations` and `functionCallingConfig`, sampling and JSON mode as
`generationConfig`. Raises InvalidRequest, naming the param, for what Gemini cannot represent. The
rules, with the documentation they come from, are listed with the translator in `gemini.py`.
"""

from __future__ import annotations

import binascii
import re
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.errors import InvalidRequest
from gateway.providers.gemini_responses import SIGNATURE_MARK

# "Use this dummy signature ... when transferring a trace from a different model" (the docs).
DUMMY_SIGNATURE = "skip_thought_signature_validator"

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[^;,]*)*);base64,(.*)", re.DOTALL)
# "Must start with a letter or an underscore" (ai.google.dev/api/caching#FunctionDeclaration).
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")

JSON = dict[str, Any]


def to_gemini_request(body: JSON) -> JSON:
    """A `GenerateContentRequest` for the client's (already filtered) body."""
    system, contents = to_gemini_contents(body["messages"])
    if not contents:
        raise InvalidRequest(
            "provider gemini needs at least one user or assistant message", param="messages"
        )
    outgoing: JSON = {"contents": contents}
    if system:
        outgoing["systemInstruction"] = {"parts": system}
    tools, config = _tools(body)
    if tools:
        outgoing["tools"] = [{"functionDeclarations": tools}]
    if config:
        outgoing["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(body)
    if generation:
        outgoing["generationConfig"] = generation
    return outgoing


# ------------------------------------------------------------------- messages


def to_gemini_contents(messages: list[Any]) -> tuple[list[JSON], list[JSON]]:
    """(systemInstruction parts, contents) for OpenAI `messages`. Raises InvalidRequest."""
    system: list[JSON] = []
    contents: list[JSON] = []
    previous_kind = ""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_text_parts(message["content"], f"{where}.content"))
            continue
        if role == "user":
            parts, kind, gemini_role = _user_parts(message["content"], where), "user", "user"
        elif role == "assistant":
            parts, kind, gemini_role = _model_parts(message, where), "model", "model"
        elif role == "tool":
            parts = [_function_response(messages, i)]
            kind, gemini_role = "tool", "user"
        else:
            raise InvalidRequest(
                f"'{where}.role' {role!r} (legacy function messages) is not supported by "
                "provider gemini; use tools",
                param=f"{where}.role",
            )
        if not parts:
            continue  # e.g. an assistant message with empty content
        if contents and kind == previous_kind:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
        previous_kind = kind
    return system, contents


def _text_parts(content: str | list[Any], where: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, part in enumerate(content):  # shapes checked by parse_chat_request
        if part.get("type") != "text":
            raise InvalidRequest(
                f"'{where}[{j}]' must be text for provider gemini", param=f"{where}[{j}]"
            )
        if part["text"]:
            parts.append({"text": part["text"]})
    return parts


def _user_parts(content: str | list[Any], where: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSON] = []
    for j, part in enumerate(content):  # shapes checked by parse_chat_request
        at = f"{where}.content[{j}]"
        kind = part["type"]
        if kind == "text":
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image_part(part["image_url"]["url"], f"{at}.image_url.url"))
        elif kind == "input_audio":
            audio = part["input_audio"]
            mime = _AUDIO_TYPES.get(audio["format"])
            if mime is None:
                raise InvalidRequest(
                    f"'{at}.input_audio.format' must be wav or mp3",
                    param=f"{at}.input_audio.format",
                )
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file":
            data = part["file"].get("file_data")
            if not isinstance(data, str):
                raise InvalidRequest(
                    f"'{at}.file' needs file_data (a data: URL) for provider gemini: OpenAI file "
                    "ids are not readable there",
                    param=f"{at}.file",
                )
            parts.append(_data_url_part(data, f"{at}.file.file_data"))
    return parts


def _image_part(url: str, where: str) -> JSON:
    if url.startswith("data:"):
        return _data_url_part(url, where)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequest(
            f"'{where}' must be a data: URL or an http(s) URL for provider gemini", param=where
        )
    file_data: JSON = {"fileUri": url}
    path = parts.path.lower()
    for extension, mime in _IMAGE_TYPES.items():
        if path.endswith(extension):
            file_data["mimeType"] = mime
            break
    return {"fileData": file_data}


def _data_url_part(url: str, where: str) -> JSON:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(
            f"'{where}' must be a base64 data: URL (data:<type>;base64,<data>)", param=where
        )
    mime, _, data = match.groups()
    try:
        binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidRequest(f"'{where}' holds invalid base64 data", param=where) from None
    return {"inlineData": {"mimeType": mime, "data": data}}


def _model_parts(message: JSON, where: str) -> list[JSON]:
    content = message.get("content")
    parts: list[JSON] = []
    if isinstance(content, str):
        if content:
            parts.append({"text": content})
    elif isinstance(content, list):
        for piece in content:
            text = piece.get("text") if piece.get("type") == "text" else piece.get("refusal")
            if text:
                parts.append({"text": text})
    for k, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{k}]"
        if call.get("type", "function") != "function":
            raise InvalidRequest(
                f"'{at}' is not a function call; provider gemini has only those", param=at
            )
        function = call["function"]
        arguments = _arguments(function["arguments"], f"{at}.function.arguments")
        part: JSON = {"functionCall": {"name": function["name"], "args": arguments}}
        if k == 0:  # the first call of a turn carries the turn's signature (Gemini 3 needs it)
            _, _, signature = call["id"].partition(SIGNATURE_MARK)
            part["thoughtSignature"] = signature or DUMMY_SIGNATURE
        parts.append(part)
    return parts


def _arguments(text: str, where: str) -> JSON:
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"'{where}' is not valid JSON", param=where) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{where}' must be a JSON object for provider gemini", param=where)
    return value


def _function_response(messages: list[Any], i: int) -> JSON:
    """The tool result `messages[i]` as a functionResponse, named by looking back for its call."""
    call_id = messages[i]["tool_call_id"]
    name = next(
        (
            call["function"]["name"]
            for earlier in reversed(messages[:i])
            if earlier.get("role") == "assistant"
            for call in earlier.get("tool_calls") or ()
            if call.get("id") == call_id
        ),
        None,
    )
    if name is None:
        raise InvalidRequest(
            f"'messages[{i}].tool_call_id' {call_id!r} matches no earlier assistant tool call; "
            "provider gemini needs it to name the function",
            param=f"messages[{i}].tool_call_id",
        )
    content = messages[i]["content"]
    text = content if isinstance(content, str) else "".join(p["text"] for p in content)
    return {"functionResponse": {"name": name, "response": {"result": text}}}


# ------------------------------------------------------------------- parameters


def _tools(body: JSON) -> tuple[list[JSON], JSON]:
    """(functionDeclarations, functionCallingConfig) for the request's tools and tool_choice."""
    declarations: list[JSON] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if tool["type"] != "function":
            raise InvalidRequest(
                f"'tools[{i}]' of type {tool['type']!r} is not supported by provider gemini",
                param=f"tools[{i}].type",
            )
        function = tool["function"]
        if not _FUNCTION_NAME.fullmatch(function["name"]):
            raise InvalidRequest(
                f"'tools[{i}].function.name' must start with a letter or '_' for provider gemini",
                param=f"tools[{i}].function.name",
            )
        declaration: JSON = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if parameters:
            declaration["parametersJsonSchema"] = _schema(parameters)
        declarations.append(declaration)
    choice = body.get("tool_choice")
    if choice is None:
        return declarations, {}
    if not declarations:
        if choice in ("none", "auto"):
            return [], {}
        raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
    if choice == "none":
        return declarations, {"mode": "NONE"}
    if choice == "auto":
        return declarations, {"mode": "AUTO"}
    if choice == "required":
        return declarations, {"mode": "ANY"}
    kind = choice["type"]
    if kind == "function":
        name = choice["function"]["name"]
        if name not in {d["name"] for d in declarations}:
            raise InvalidRequest(
                f"'tool_choice.function.name' {name!r} is not one of the tools",
                param="tool_choice.function.name",
            )
        return declarations, {"mode": "ANY", "allowedFunctionNames": [name]}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools")
        allowed = allowed if isinstance(allowed, dict) else {}
        names = {
            t["function"]["name"]
            for t in allowed.get("tools") or ()
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        }
        kept = [d for d in declarations if d["name"] in names]
        if not kept:
            raise InvalidRequest(
                "'tool_choice.allowed_tools.tools' names none of the tools",
                param="tool_choice.allowed_tools.tools",
            )
        mode = "ANY" if allowed.get("mode") == "required" else "AUTO"
        return kept, {"mode": mode}
    raise InvalidRequest(
        f"'tool_choice' of type {kind!r} is not supported by provider gemini",
        param="tool_choice.type",
    )


def _generation_config(body: JSON) -> JSON:
    config: JSON = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    n = body.get("n")
    if n is not None and n != 1:
        config["candidateCount"] = n
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format["type"]
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        if kind == "json_schema":
            schema = response_format["json_schema"].get("schema")
            if schema:
                config["responseJsonSchema"] = _schema(schema)
    return config


def _schema(schema: JSON) -> JSON:
    """A JSON Schema as sent to Gemini: all of it but the root `$schema`."""
    return {k: v for k, v in schema.items() if k != "$schema"}
