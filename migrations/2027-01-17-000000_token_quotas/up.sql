-- Token quotas: tokens per minute (tpm) and per calendar month (monthly_tokens) of a key, and of
-- all of a user's keys together, set by admins. NULL: the defaults of the settings
-- (rate_limit.default_tpm, ...), which are off unless an operator sets them.
ALTER TABLE api_keys
    ADD COLUMN tpm bigint CONSTRAINT api_keys_tpm_positive CHECK (tpm > 0),
    ADD COLUMN monthly_tokens bigint
        CONSTRAINT api_keys_monthly_tokens_positive CHECK (monthly_tokens > 0);
ALTER TABLE users
    ADD COLUMN tpm bigint CONSTRAINT users_tpm_positive CHECK (tpm > 0),
    ADD COLUMN monthly_tokens bigint
        CONSTRAINT users_monthly_tokens_positive CHECK (monthly_tokens > 0);

-- What a call that reserved tokens was charged against its quotas when it settled (its
-- reported usage, nothing, or its reservation); NULL for calls that reserved nothing, which
-- count their prompt and completion tokens. A month's quota counters, lost with Redis, start
-- again from the sum of these.
ALTER TABLE usage_events ADD COLUMN quota_tokens bigint;

-- Serves that sum per key (per user, usage_events_user_id_created_at_idx does).
CREATE INDEX usage_events_key_id_created_at_idx ON usage_events (key_id, created_at);
