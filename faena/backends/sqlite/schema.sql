-- faena SQLite schema: broker tables (faena_messages, faena_dead, faena_workers, faena_meta),
-- the result store table (faena_results) and the coordination store's (faena_keys,
-- faena_tokens). Every statement is idempotent, so any process may run this file against a new
-- or existing database; the loader wraps it in one BEGIN IMMEDIATE transaction.
--
-- faena_messages.state: 0 ready, 1 leased, 2 scheduled. A message row is never deleted when it
-- is handed out, only when it is acknowledged, removed, purged or moved to faena_dead.
-- seq orders messages FIFO within a priority; it comes from faena_meta('seq'), a counter that
-- only grows, so a retried or recovered message goes to the back of its priority.

CREATE TABLE IF NOT EXISTS faena_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

INSERT OR IGNORE INTO faena_meta (key, value) VALUES ('seq', 0), ('schema', 1);

CREATE TABLE IF NOT EXISTS faena_messages (
    id          TEXT PRIMARY KEY,
    queue       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    due         REAL NOT NULL,
    lease_until REAL,
    worker      TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    fence       INTEGER NOT NULL DEFAULT 0,
    last_reason TEXT,
    enqueued_at REAL NOT NULL,
    body        BLOB NOT NULL
);

-- The claim walks this index per queue in hand-out order and stops after LIMIT rows.
CREATE INDEX IF NOT EXISTS faena_messages_ready
    ON faena_messages (queue, priority DESC, seq) WHERE state = 0;
-- Promotion of due scheduled messages, and the next due time a waiting consumer sleeps until.
CREATE INDEX IF NOT EXISTS faena_messages_scheduled
    ON faena_messages (due) WHERE state = 2;
-- Recovery of expired leases, and the next expiry a waiting consumer sleeps until.
CREATE INDEX IF NOT EXISTS faena_messages_leased
    ON faena_messages (lease_until) WHERE state = 1;
-- Ready messages that were handed out before (recovered or released with a reason): the only
-- ones that can have used up max_deliveries, so the claim's dead-letter sweep stays cheap.
CREATE INDEX IF NOT EXISTS faena_messages_redelivered
    ON faena_messages (deliveries) WHERE state = 0 AND deliveries > 0;

CREATE TABLE IF NOT EXISTS faena_dead (
    id          TEXT PRIMARY KEY,
    queue       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    dead_at     REAL NOT NULL,
    deliveries  INTEGER NOT NULL,
    fence       INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    body        BLOB NOT NULL
);

CREATE INDEX IF NOT EXISTS faena_dead_newest ON faena_dead (dead_at DESC);

CREATE TABLE IF NOT EXISTS faena_workers (
    id           TEXT PRIMARY KEY,
    heartbeat_at REAL NOT NULL,
    data         TEXT NOT NULL
);

-- data is encode_record(record); fence and expires_at are copied out so the fenced upsert,
-- expiry and cleanup run in SQL without decoding.
CREATE TABLE IF NOT EXISTS faena_results (
    id         TEXT PRIMARY KEY,
    fence      INTEGER NOT NULL,
    expires_at REAL,
    data       BLOB NOT NULL
);

CREATE INDEX IF NOT EXISTS faena_results_expiry
    ON faena_results (expires_at) WHERE expires_at IS NOT NULL;

-- The coordination store. value has no declared type, so SQLite keeps each value as given:
-- TEXT for a set_if_absent value, INTEGER for a counter, an empty BLOB for a set (its members
-- are in faena_key_members); statements tell them apart with typeof().
-- expires_at NULL never expires (a counter created without a TTL). An expired row is absent
-- for every statement (each checks expires_at against the caller's clock) until cleanup.
-- Not WITHOUT ROWID: SQLite 3.40 evaluates `expires_at IS NULL` wrongly in the RETURNING clause
-- of a WITHOUT ROWID table, which delete() relies on.
CREATE TABLE IF NOT EXISTS faena_keys (
    key        TEXT PRIMARY KEY,
    value      NOT NULL,
    expires_at REAL
);

CREATE INDEX IF NOT EXISTS faena_keys_expiry
    ON faena_keys (expires_at) WHERE expires_at IS NOT NULL;

-- The members of a set key (a faena_keys row whose value is the empty BLOB, from add_member).
-- They live and die with that row: add_member clears them when it creates the set afresh,
-- delete and cleanup delete them with it.
CREATE TABLE IF NOT EXISTS faena_key_members (
    key    TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (key, member)
) WITHOUT ROWID;

-- Fencing tokens: one counter per name that only grows; nothing ever deletes a row.
CREATE TABLE IF NOT EXISTS faena_tokens (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- Sliding windows (take_in_window): one row per use, at the store's time; expires_at = at +
-- window, when cleanup may delete it. A keyspace of its own: key operations never read it.
CREATE TABLE IF NOT EXISTS faena_window_uses (
    key        TEXT NOT NULL,
    at         REAL NOT NULL,
    expires_at REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS faena_window_uses_key ON faena_window_uses (key, at);

CREATE INDEX IF NOT EXISTS faena_window_uses_expiry ON faena_window_uses (expires_at);
