"""Outbox tests."""
