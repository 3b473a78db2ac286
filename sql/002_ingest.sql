-- Tables the worker writes: ingest events and their effects on the shop floor.

-- One row per accepted station event. (source_system, dedupe_key) is the
-- idempotency key, and content_hash separates a redelivery from a conflicting
-- reuse.
CREATE TABLE ingest_event (
    id                  bigserial PRIMARY KEY,
    source_system       text NOT NULL,
    dedupe_key          text NOT NULL,
    event_type          text NOT NULL CHECK (event_type IN ('AUTO', 'BATCH', 'TEST')),
    content_hash        bytea NOT NULL,
    occurred_at         timestamptz NOT NULL,
    received_at         timestamptz NOT NULL,
    run_id              bigint NOT NULL REFERENCES run (id),
    route_version_id    bigint NOT NULL REFERENCES route_version (id),
    step_no             integer NOT NULL,
    station_code        text,
    line_code           text,
    carrier_code        text,
    sn                  text,
    sn_list             text[] NOT NULL DEFAULT '{}',
    result              text CHECK (result IN ('PASS', 'FAIL')),
    test_result_id      text,
    raw                 jsonb NOT NULL,
    normalized          jsonb NOT NULL,
    measurement_summary jsonb NOT NULL DEFAULT '{}',
    links               jsonb NOT NULL DEFAULT '{}',
    origin_topic        text,
    origin_partition    integer,
    origin_offset       bigint,
    UNIQUE (source_system, dedupe_key)
);

CREATE INDEX ingest_event_sn_idx ON ingest_event (sn);
CREATE INDEX ingest_event_sn_list_idx ON ingest_event USING gin (sn_list);

CREATE TABLE carrier (
    id         bigserial PRIMARY KEY,
    code       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE carrier_track (
    id              bigserial PRIMARY KEY,
    carrier_id      bigint NOT NULL REFERENCES carrier (id),
    ingest_event_id bigint NOT NULL REFERENCES ingest_event (id),
    run_id          bigint NOT NULL REFERENCES run (id),
    step_no         integer NOT NULL,
    station_code    text,
    in_at           timestamptz NOT NULL,
    out_at          timestamptz NOT NULL,
    result          text NOT NULL CHECK (result IN ('PASS', 'FAIL'))
);

CREATE TABLE carrier_load (
    id              bigserial PRIMARY KEY,
    carrier_id      bigint NOT NULL REFERENCES carrier (id),
    unit_id         bigint NOT NULL REFERENCES unit (id),
    loaded_at       timestamptz NOT NULL,
    unloaded_at     timestamptz,
    ingest_event_id bigint NOT NULL REFERENCES ingest_event (id)
);

CREATE INDEX carrier_load_unit_idx ON carrier_load (unit_id);
CREATE INDEX carrier_load_open_idx ON carrier_load (carrier_id)
    WHERE unloaded_at IS NULL;

CREATE TABLE track (
    id               bigserial PRIMARY KEY,
    unit_id          bigint NOT NULL REFERENCES unit (id),
    ingest_event_id  bigint NOT NULL REFERENCES ingest_event (id),
    carrier_track_id bigint REFERENCES carrier_track (id),
    step_no          integer NOT NULL,
    station_code     text,
    source           text NOT NULL CHECK (source IN ('AUTO', 'BATCH', 'TEST')),
    in_at            timestamptz NOT NULL,
    out_at           timestamptz NOT NULL,
    result           text NOT NULL CHECK (result IN ('PASS', 'FAIL'))
);

CREATE INDEX track_unit_idx ON track (unit_id);

-- A data value belongs to a unit track or, for BATCH events, a carrier track.
CREATE TABLE data_value (
    id               bigserial PRIMARY KEY,
    track_id         bigint REFERENCES track (id),
    carrier_track_id bigint REFERENCES carrier_track (id),
    data_spec_id     bigint NOT NULL REFERENCES data_spec (id),
    step_no          integer NOT NULL,
    name             text NOT NULL,
    value            jsonb,
    unit             text,
    judge            text CHECK (judge IN ('PASS', 'FAIL')),
    CHECK ((track_id IS NULL) <> (carrier_track_id IS NULL))
);

CREATE INDEX data_value_track_idx ON data_value (track_id);
CREATE INDEX data_value_carrier_track_idx ON data_value (carrier_track_id);
