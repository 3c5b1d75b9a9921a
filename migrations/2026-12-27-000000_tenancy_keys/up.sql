-- Tenancy of keys and users: the models an API key may be used with, and a rate limit of all a
-- user's keys together (set by an admin). Both NULL by default: keys may be used with every
-- model their user may use, and users are held to rate_limit.user_rpm when it is set.

-- 1 to 100 model names (the domain's ModelAllowlist); NULL: every model.
ALTER TABLE api_keys ADD COLUMN models text[]
    CONSTRAINT api_keys_models_bounded CHECK (cardinality(models) BETWEEN 1 AND 100);

ALTER TABLE users ADD COLUMN rate_limit_rpm integer
    CONSTRAINT users_rate_limit_rpm_positive CHECK (rate_limit_rpm > 0);
