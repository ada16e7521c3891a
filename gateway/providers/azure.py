"""Placeholder while the azure translator is written: replaced in this change."""

from gateway.providers.openai import OpenAITranslator

AZURE = OpenAITranslator()
