"""Shared helpers for Blitz end-to-end tests (origin server, gateway process, raw client)."""
