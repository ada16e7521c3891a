"""Placeholder while the ollama translator is written: replaced in this change."""

from gateway.providers.openai import OpenAITranslator

OLLAMA = OpenAITranslator()
