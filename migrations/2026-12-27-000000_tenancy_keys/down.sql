ALTER TABLE users DROP COLUMN rate_limit_rpm;
ALTER TABLE api_keys DROP COLUMN models;
