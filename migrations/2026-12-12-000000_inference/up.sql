-- Inference: the credential the gateway sends to a version's model server, and the usage log.

-- Sent to the model server as-is, so it is stored as-is (it cannot be hashed); the API never
-- returns it.
ALTER TABLE model_versions ADD COLUMN upstream_api_key text;

-- Serves the routing lookup (the highest version of a model that has an endpoint) without
-- walking past versions that have none, and the list of servable models.
CREATE INDEX model_versions_servable_idx ON model_versions (model_id, version)
    WHERE endpoint_url IS NOT NULL;

-- One row per inference call, appended in batches off the request path. No foreign keys: usage
-- history outlives deleted keys, users and models, and inserts stay cheap.
CREATE TABLE usage_events (
    id                bigserial   PRIMARY KEY,
    key_id            uuid        NOT NULL,
    user_id           uuid        NOT NULL,
    -- "C" collation, as models.name: reports grouped by model sort as Rust sorts.
    model             text        COLLATE "C" NOT NULL,
    -- NULL when the call failed before a version was resolved.
    version           integer,
    route             text        NOT NULL,
    status            integer     NOT NULL,
    latency_ms        integer     NOT NULL,
    upstream_ms       integer,
    prompt_tokens     bigint,
    completion_tokens bigint,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Serve the usage report: over a time range, for one user, or for one model.
CREATE INDEX usage_events_created_at_idx ON usage_events (created_at);
CREATE INDEX usage_events_user_id_created_at_idx ON usage_events (user_id, created_at);
CREATE INDEX usage_events_model_created_at_idx ON usage_events (model, created_at);
