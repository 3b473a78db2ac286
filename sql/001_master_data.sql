-- Master data: the factory as the MES models it. Loaded by `ingest-worker seed`,
-- keyed by natural keys (codes, names, numbers).

CREATE TABLE line (
    id   bigserial PRIMARY KEY,
    code text NOT NULL UNIQUE,
    name text
);

CREATE TABLE station_group (
    id      bigserial PRIMARY KEY,
    code    text NOT NULL UNIQUE,
    line_id bigint REFERENCES line (id)
);

CREATE TABLE station (
    id               bigserial PRIMARY KEY,
    code             text NOT NULL UNIQUE,
    line_id          bigint REFERENCES line (id),
    station_group_id bigint REFERENCES station_group (id),
    station_type     text NOT NULL CHECK (station_type IN ('AUTO', 'BATCH', 'TEST')),
    active           boolean NOT NULL DEFAULT true
);

CREATE TABLE data_spec (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    data_type    text NOT NULL CHECK (data_type IN ('NUMBER', 'TEXT', 'BOOLEAN', 'JSON')),
    trigger_type text NOT NULL
        CHECK (trigger_type IN ('EVENT', 'TIME', 'EACH_UNIT', 'EACH_CARRIER')),
    method       text NOT NULL CHECK (method IN ('AUTO', 'MANUAL')),
    item_type    text,
    is_required  boolean NOT NULL DEFAULT false,
    spec         jsonb NOT NULL DEFAULT '{}',
    active       boolean NOT NULL DEFAULT true
);

CREATE TABLE route (
    id            bigserial PRIMARY KEY,
    code          text NOT NULL UNIQUE,
    source_system text,
    source_key    text
);

-- A route version is immutable once loaded; content_hash detects a changed
-- version seeded again under the same number.
CREATE TABLE route_version (
    id           bigserial PRIMARY KEY,
    route_id     bigint NOT NULL REFERENCES route (id),
    version_no   integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('DRAFT', 'READY', 'RETIRED')),
    compiled_at  timestamptz,
    content_hash text NOT NULL,
    UNIQUE (route_id, version_no)
);

CREATE TABLE route_step (
    id                     bigserial PRIMARY KEY,
    route_version_id       bigint NOT NULL REFERENCES route_version (id),
    step_no                integer NOT NULL,
    operation              text NOT NULL,
    station_type           text NOT NULL
        CHECK (station_type IN ('AUTO', 'BATCH', 'TEST')),
    station_group          text,
    allowed_stations       text[],
    requires_fai           boolean NOT NULL DEFAULT false,
    requires_authorization boolean NOT NULL DEFAULT false,
    data_specs             text[] NOT NULL DEFAULT '{}',
    ingest_mapping         jsonb,
    UNIQUE (route_version_id, step_no)
);

CREATE TABLE run (
    id               bigserial PRIMARY KEY,
    run_no           text NOT NULL UNIQUE,
    wo_no            text,
    route_version_id bigint NOT NULL REFERENCES route_version (id),
    status           text NOT NULL CHECK (status IN (
        'PREP', 'AUTHORIZED', 'IN_PROGRESS', 'COMPLETED', 'CLOSED_REWORK', 'SCRAPPED'
    )),
    started_at       timestamptz
);

-- `version` rises with every move, so a conditional update can tell whether
-- the unit changed after the gates read it.
CREATE TABLE unit (
    id              bigserial PRIMARY KEY,
    sn              text NOT NULL UNIQUE,
    run_id          bigint NOT NULL REFERENCES run (id),
    status          text NOT NULL CHECK (status IN (
        'QUEUED', 'IN_STATION', 'DONE', 'OUT_FAILED', 'SCRAPPED', 'ON_HOLD'
    )),
    current_step_no integer,
    version         bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX unit_run_id_idx ON unit (run_id);
