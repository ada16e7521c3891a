"""OpenAI's chat wire format: TypedDicts for what the gateway emits, and `ChatRequest`, a chat
request that `gateway/request_parser.py` validated (its `parse_chat_request()` is the one gate
untrusted bodies pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypedDict

from gateway.resilience.limiter import estimate_tokens

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class FunctionCall(TypedDict):
    name: str
    arguments: str


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ToolCallDelta(TypedDict, total=False):
    index: int
    id: str
    type: Literal["function"]
    function: dict[str, str]


class Message(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: NotRequired[list[ToolCall]]


class Choice(TypedDict):
    index: int
    message: Message
    logprobs: None
    finish_reason: FinishReason


class PromptTokensDetails(TypedDict, total=False):
    cached_tokens: int


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: NotRequired[PromptTokensDetails]


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: NotRequired[Usage]
    system_fingerprint: NotRequired[str | None]


class Delta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[ToolCallDelta]


class ChunkChoice(TypedDict):
    index: int
    delta: Delta
    logprobs: None
    finish_reason: FinishReason | None


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: NotRequired[Usage | None]


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


JSONObject = dict[str, object]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat request. `body` is the client's JSON as sent (unknown fields kept)."""

    body: JSONObject
    model: str
    stream: bool
    include_usage: bool
    forward_headers: Mapping[str, str] = field(default_factory=dict)
    # For answers built from a provider that has no such fields (Anthropic, Gemini, Ollama):
    # the completion's `id` and `created` (unix seconds, read when the request arrived).
    id: str = "chatcmpl-gateway"
    created: int = 0
    _estimate: int = field(default=-1, repr=False, compare=False)

    @property
    def messages(self) -> list[JSONObject]:
        return self.body["messages"]  # type: ignore[return-value]  # checked by the parser

    def prompt_tokens(self) -> int:
        """The prompt's estimated tokens (`estimate_tokens`), counted once per request: a
        client key's limiter and every upstream attempt's limiter charge the same figure."""
        if self._estimate < 0:
            object.__setattr__(self, "_estimate", estimate_tokens(self.body))
        return self._estimate
