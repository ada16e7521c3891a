"""Resilience: circuit breakers, rate limits, retries and deadlines for upstream calls."""
