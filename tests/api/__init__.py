"""API conformance tests."""
