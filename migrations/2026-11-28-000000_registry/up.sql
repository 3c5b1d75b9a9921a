-- The model registry: models, their gapless numbered versions, and movable aliases.

CREATE TABLE models (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- "C" collation: byte order, so ORDER BY name and keyset cursors (name > $after) agree with
    -- Rust's string ordering and do not depend on the server's locale.
    name           text        COLLATE "C" NOT NULL UNIQUE,
    description    text,
    tags           text[]      NOT NULL DEFAULT '{}',
    metadata       jsonb       NOT NULL DEFAULT '{}',
    -- Allocation counter of version numbers. Incremented under the row lock in the same
    -- transaction that inserts the version, so numbers are gapless and never reused.
    next_version   integer     NOT NULL DEFAULT 1 CHECK (next_version >= 1),
    -- The highest existing version (NULL when there is none); kept in step by the repository.
    latest_version integer     CHECK (latest_version >= 1 AND latest_version < next_version),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Serves the tag filter (tags @> ARRAY[$tag]).
CREATE INDEX models_tags_idx ON models USING gin (tags);

CREATE TABLE model_versions (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id     uuid        NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version      integer     NOT NULL CHECK (version >= 1),
    source_uri   text        NOT NULL,
    endpoint_url text,
    framework    text,
    description  text,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Also the index behind lookups by model and the cascade from models.
    UNIQUE (model_id, version)
);

CREATE TABLE model_aliases (
    model_id   uuid        NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    alias      text        COLLATE "C" NOT NULL,
    version_id uuid        NOT NULL REFERENCES model_versions (id) ON DELETE CASCADE,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, alias)
);

-- Serves the cascade when a version is deleted.
CREATE INDEX model_aliases_version_id_idx ON model_aliases (version_id);
