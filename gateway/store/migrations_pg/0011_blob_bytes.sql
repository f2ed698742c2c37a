-- Attachment bytes in the database (PostgreSQL only), so that several instances need no
-- shared directory: each instance's <data_dir>/blobs is a cache of this table, filled on
-- the first read (docs/postgresql.md). Keyed by the bytes' SHA-256, written once (ON
-- CONFLICT DO NOTHING) before the message naming them commits; a purge or an erasure
-- deletes a row once no attachment names its digest.
CREATE TABLE blobs (
    sha256 TEXT COLLATE "C" PRIMARY KEY,
    size   BIGINT NOT NULL,
    data   BYTEA NOT NULL
);
-- Attachments are mostly compressed already (images, PDFs, archives): kept uncompressed,
-- a cache fill reads a range with substring() without inflating the whole value.
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
