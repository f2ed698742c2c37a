-- Fewer random B-tree pages touched per inbound message.
-- The dedupe index, with provider_message_id second, also serves e-mail threading
-- (channel + Message-ID across accounts), so messages_by_provider_ref goes; merges and
-- erasure reach a customer's messages through their conversations
-- (messages_by_conversation), so messages_by_customer goes.

DROP INDEX messages_by_provider_ref;
DROP INDEX messages_by_customer;
DROP INDEX messages_by_provider_id;
CREATE UNIQUE INDEX messages_by_provider_id ON messages(channel, provider_message_id, account);
