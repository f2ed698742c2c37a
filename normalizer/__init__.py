"""Turn provider payloads into omnirelay's normalized message: pure functions, no I/O."""
