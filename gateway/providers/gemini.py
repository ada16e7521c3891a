"""Placeholder while the gemini translator is written: replaced in this change."""

from gateway.providers.openai import OpenAITranslator

GEMINI = OpenAITranslator()
