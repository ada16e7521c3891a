"""Upstream state, clients and the built-in mock."""
