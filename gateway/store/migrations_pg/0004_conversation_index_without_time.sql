-- Mirrors SQLite 0004: a customer's conversations by customer only.

DROP INDEX conversations_by_customer;
CREATE INDEX conversations_by_customer ON conversations(customer_id);
