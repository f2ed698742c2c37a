"""The HTTP API: ``/v1`` for help desks, ``/hooks`` for providers, health and metrics."""
