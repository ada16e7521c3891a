"""Placeholder while the anthropic translator is written: replaced in this change."""

from gateway.providers.openai import OpenAITranslator

ANTHROPIC = OpenAITranslator()
