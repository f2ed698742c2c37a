"""Durable outbound delivery: queued rows, workers, retries with backoff."""
