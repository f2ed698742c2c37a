-- Mirrors SQLite 0003: erasure finds a customer's events in one scan.

DROP INDEX events_by_customer;
