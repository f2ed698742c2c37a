"""omnirelay test suite."""
