"""Provider kind -> translator. The mock speaks OpenAI's format, so it shares that translator."""

from gateway.providers.base import StreamDecoder, Translator, UpstreamRequest
from gateway.providers.openai import OPENAI

TRANSLATORS: dict[str, Translator] = {
    "openai": OPENAI,
    "mock": OPENAI,
}

__all__ = ["TRANSLATORS", "StreamDecoder", "Translator", "UpstreamRequest"]
