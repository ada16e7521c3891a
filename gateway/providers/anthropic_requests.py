"""OpenAI's messages as Anthropic's conversation: system and developer messages become the
`system` blocks, the rest alternating user/assistant turns that open with the user, tool calls
`tool_use` blocks paired with the `tool_result` blocks that answer them, images and PDFs base64
or url sources. What is refused and why is listed with the translator, in
`gateway/providers/anthropic.py`; every refusal is a 400 naming the message at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidRequest

OPENING = "(The conversation starts here.)"  # the user turn put before an assistant's opening

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:([\w.+/-]+);base64,(.*)", re.DOTALL)
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class _Pending:
    """The tool calls of the last assistant message that still wait for their tool message."""

    path: str
    ids: list[str]


def to_anthropic_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, object]], list[dict[str, Any]]]:
    """OpenAI messages as Anthropic's (system blocks, alternating turns). Raises InvalidRequest."""
    system: list[dict[str, object]] = []
    turns: list[dict[str, Any]] = []
    pending: _Pending | None = None
    for i, message in enumerate(messages):
        role, path = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_blocks(message["content"]))
            continue
        if role == "tool":
            call_id = message["tool_call_id"]
            if pending is None or call_id not in pending.ids:
                raise InvalidRequest(
                    f"'{path}' answers tool call '{call_id[:64]}', which the assistant message "
                    "before it did not make",
                    param=f"{path}.tool_call_id",
                )
            pending.ids.remove(call_id)
            blocks = [_tool_result(message)]
            turn_role = "user"
        else:
            _check_answered(pending)
            pending = None
            if role == "user":
                blocks = _user_blocks(message["content"], f"{path}.content")
                turn_role = "user"
            elif role == "assistant":
                blocks, ids = _assistant_blocks(message, path)
                pending = _Pending(path, ids) if ids else None
                turn_role = "assistant"
            else:
                raise InvalidRequest(
                    f"'{path}.role' {role} is not supported by provider anthropic; use tool "
                    "messages",
                    param=f"{path}.role",
                )
        if not blocks:
            continue  # nothing but empty text: Anthropic refuses empty content
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    _check_answered(pending)
    if not turns:
        raise InvalidRequest(
            "provider anthropic needs at least one user or assistant message with content",
            param="messages",
        )
    for turn in turns:
        if turn["role"] == "user":  # tool results open their turn (Anthropic's rule)
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING}]})
    _trim_final_assistant(turns)
    return system, turns


def _check_answered(pending: _Pending | None) -> None:
    if pending is not None and pending.ids:
        raise InvalidRequest(
            f"'{pending.path}.tool_calls' has no tool message answering '{pending.ids[0][:64]}'; "
            "each tool call needs its tool message right after the assistant message",
            param=f"{pending.path}.tool_calls",
        )


def _trim_final_assistant(turns: list[dict[str, Any]]) -> None:
    """A final assistant turn (a prefill) may not end in whitespace, Anthropic says."""
    last = turns[-1]
    if last["role"] != "assistant" or last["content"][-1]["type"] != "text":
        return
    last["content"][-1]["text"] = last["content"][-1]["text"].rstrip()
    # the block held more than whitespace (blank ones are never added), so it is not empty


def _text_blocks(content: object) -> list[dict[str, object]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    assert isinstance(content, list)  # the request parser checked it
    blocks: list[dict[str, object]] = []
    for part in content:
        text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        if isinstance(text, str) and text.strip():
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: object, path: str) -> list[dict[str, object]]:
    if isinstance(content, str):
        return _text_blocks(content)
    assert isinstance(content, list)
    blocks: list[dict[str, object]] = []
    for j, part in enumerate(content):
        where = f"{path}[{j}]"
        kind = part["type"]
        if kind == "text":
            blocks.extend(_text_blocks([part]))
        elif kind == "image_url":
            blocks.append(_image(part["image_url"]["url"], f"{where}.image_url.url"))
        elif kind == "file":
            blocks.append(_document(part["file"], f"{where}.file"))
        else:
            raise InvalidRequest(
                f"'{where}': provider anthropic does not accept {kind} parts", param=where
            )
    return blocks


def _image(url: str, param: str) -> dict[str, object]:
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(f"'{param}' must be an http(s) URL or a base64 data: URL", param=param)
    media_type = match.group(1).lower().replace("image/jpg", "image/jpeg")
    if media_type not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"'{param}': provider anthropic takes JPEG, PNG, GIF or WebP images, not "
            f"{media_type[:64]}",
            param=param,
        )
    source = {"type": "base64", "media_type": media_type, "data": match.group(2)}
    return {"type": "image", "source": source}


def _document(file: Mapping[str, object], param: str) -> dict[str, object]:
    data = file.get("file_data")
    match = _DATA_URL.fullmatch(data) if isinstance(data, str) else None
    if match is None or match.group(1).lower() != "application/pdf":
        raise InvalidRequest(
            f"'{param}': provider anthropic takes files as PDF data: URLs in 'file_data' only",
            param=param,
        )
    source = {"type": "base64", "media_type": "application/pdf", "data": match.group(2)}
    return {"type": "document", "source": source}


def _assistant_blocks(
    message: Mapping[str, Any], path: str
) -> tuple[list[dict[str, object]], list[str]]:
    content = message.get("content")
    blocks = [] if content is None else _text_blocks(content)
    ids: list[str] = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        where = f"{path}.tool_calls[{j}]"
        if call.get("type", "function") != "function":
            raise InvalidRequest(
                f"'{where}': provider anthropic takes function tool calls only", param=where
            )
        function = call["function"]
        arguments = function["arguments"]
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                f"'{where}.function.arguments' must be a JSON object for provider anthropic",
                param=f"{where}.function.arguments",
            )
        ids.append(call["id"])
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call["id"]),
                "name": function["name"],
                "input": parsed,
            }
        )
    return blocks, ids


def _tool_result(message: Mapping[str, Any]) -> dict[str, object]:
    block: dict[str, object] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message["tool_call_id"]),
    }
    text = _text_blocks(message["content"])
    if text:
        block["content"] = text
    return block


def _tool_id(call_id: str) -> str:
    return _NOT_ID.sub("_", call_id) or "_"
