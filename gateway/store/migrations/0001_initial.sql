-- omnirelay schema, version 1. Every hot-path lookup has an index (see comments).

CREATE TABLE customers (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    merged_into TEXT REFERENCES customers(id),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Inbound sender resolution: (kind, address) is the lookup key.
CREATE TABLE identities (
    kind        TEXT NOT NULL,
    address     TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    channels    TEXT NOT NULL DEFAULT '[]',
    created_at  TEXT NOT NULL,
    PRIMARY KEY (kind, address)
) WITHOUT ROWID;
CREATE INDEX identities_by_customer ON identities(customer_id);

CREATE TABLE conversations (
    id              TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL REFERENCES customers(id),
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    status          TEXT NOT NULL,
    opened_at       TEXT NOT NULL,
    closed_at       TEXT,
    last_message_at TEXT NOT NULL,
    tags            TEXT NOT NULL DEFAULT '[]',
    priority        TEXT NOT NULL DEFAULT 'normal',
    queue           TEXT,
    context         TEXT NOT NULL DEFAULT '{}'
);
-- "the customer's latest conversation" on every inbound message
CREATE INDEX conversations_by_customer ON conversations(customer_id, last_message_at);
CREATE INDEX conversations_by_status ON conversations(status, id);

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    conversation_id     TEXT NOT NULL REFERENCES conversations(id),
    customer_id         TEXT NOT NULL,
    channel             TEXT NOT NULL,
    account             TEXT NOT NULL,
    direction           TEXT NOT NULL,
    provider_message_id TEXT,
    status              TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    data                TEXT NOT NULL
);
-- dedupe key: one provider message is stored once
CREATE UNIQUE INDEX messages_by_provider_id
    ON messages(channel, account, provider_message_id);
-- e-mail threading: In-Reply-To/References across accounts
CREATE INDEX messages_by_provider_ref ON messages(provider_message_id);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE INDEX messages_by_customer ON messages(customer_id);

CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    message_id   TEXT NOT NULL,
    filename     TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX attachments_by_message ON attachments(message_id);
CREATE INDEX attachments_by_sha ON attachments(sha256);

-- The provider's payload as received; purged by the retention setting.
CREATE TABLE raw_payloads (
    message_id   TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    body         BLOB NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX raw_payloads_by_age ON raw_payloads(created_at);

-- The feed. seq is the cursor; body is the event envelope as served.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    type            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    conversation_id TEXT,
    customer_id     TEXT,
    body            BLOB NOT NULL
);
CREATE INDEX events_by_customer ON events(customer_id);

CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    message_id      TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL,
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    state           TEXT NOT NULL,          -- pending | inflight | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    created_at      REAL NOT NULL
);
CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
CREATE INDEX outbox_by_conversation ON outbox(conversation_id, state, seq);

CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

CREATE TABLE webhook_cursors (
    subscription TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    subscription    TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    ordering_key    TEXT NOT NULL,
    state           TEXT NOT NULL,          -- pending | inflight | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    UNIQUE (subscription, seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(subscription, state, next_attempt_at);
CREATE INDEX webhook_deliveries_order ON webhook_deliveries(subscription, ordering_key, seq);

-- Adapter checkpoints (IMAP UIDVALIDITY/UID, polling offsets).
CREATE TABLE checkpoints (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
