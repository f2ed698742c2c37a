"""Ops tests: systemd, sd_notify, reload, config checks, logs, readiness, data hygiene."""
