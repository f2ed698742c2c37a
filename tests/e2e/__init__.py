"""Tests against a running daemon process."""
