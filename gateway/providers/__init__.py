"""Provider kind -> translator. The mock speaks OpenAI's format, so it shares that translator."""

from gateway.providers.anthropic import ANTHROPIC
from gateway.providers.azure import AZURE
from gateway.providers.base import StreamDecoder, Translator, UpstreamRequest
from gateway.providers.gemini import GEMINI
from gateway.providers.ollama import OLLAMA
from gateway.providers.openai import OPENAI
from gateway.providers.tgi import TGI

TRANSLATORS: dict[str, Translator] = {
    "openai": OPENAI,
    "azure": AZURE,
    "anthropic": ANTHROPIC,
    "gemini": GEMINI,
    "ollama": OLLAMA,
    "tgi": TGI,
    "mock": OPENAI,
}

__all__ = ["TRANSLATORS", "StreamDecoder", "Translator", "UpstreamRequest"]
