-- Mirrors SQLite 0002: the dedupe index with provider_message_id second also serves
-- e-mail threading, so messages_by_provider_ref and messages_by_customer go.

DROP INDEX messages_by_provider_ref;
DROP INDEX messages_by_customer;
DROP INDEX messages_by_provider_id;
CREATE UNIQUE INDEX messages_by_provider_id ON messages(channel, provider_message_id, account);
