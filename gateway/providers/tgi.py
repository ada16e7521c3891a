"""Placeholder while the tgi translator is written: replaced in this change."""

from gateway.providers.openai import OpenAITranslator

TGI = OpenAITranslator()
