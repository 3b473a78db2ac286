-- Normalized events waiting for the relay to publish them downstream. A row is
-- written in the transaction that stores its ingest event, so every committed
-- event gets one and a rolled-back event none.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    ingest_event_id bigint NOT NULL,
    record_key      text,
    value           bytea NOT NULL,
    headers         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
