-- Every inbound message moves its conversation's last_message_at, and with it the
-- conversation's entry in conversations_by_customer (customer_id, last_message_at): a
-- random index page rewritten per message. A customer has few conversations, so finding
-- the latest one needs only the customer's entries; they are sorted in memory.

DROP INDEX conversations_by_customer;
CREATE INDEX conversations_by_customer ON conversations(customer_id);
