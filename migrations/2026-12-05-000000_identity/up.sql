-- Identity: users, their API keys (hashes only), and the owner of each model.

CREATE TABLE users (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- "C" collation, as models.name: ORDER BY username and keyset cursors agree with Rust.
    username   text        COLLATE "C" NOT NULL UNIQUE,
    role       text        NOT NULL CHECK (role IN ('admin', 'member')),
    disabled   boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           text        NOT NULL,
    -- SHA-256 of the whole key; the plaintext is never stored. The unique index serves the
    -- authentication lookup.
    key_hash       bytea       NOT NULL UNIQUE
                               CONSTRAINT api_keys_key_hash_is_sha256 CHECK (octet_length(key_hash) = 32),
    -- The first characters of the key, to recognise it in listings.
    prefix         text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    revoked_at     timestamptz,
    -- Approximate: written in batches off the request path, never moved backwards.
    last_used_at   timestamptz,
    rate_limit_rpm integer     CHECK (rate_limit_rpm > 0)
);

-- Serves listing a user's keys and the cascade when a user is deleted.
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

-- NULL for models created before users existed, and for models whose owner was deleted.
ALTER TABLE models ADD COLUMN owner_id uuid REFERENCES users (id) ON DELETE SET NULL;

-- Serves the ON DELETE SET NULL when a user is deleted.
CREATE INDEX models_owner_id_idx ON models (owner_id);
