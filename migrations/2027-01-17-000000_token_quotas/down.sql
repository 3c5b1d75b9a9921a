DROP INDEX usage_events_key_id_created_at_idx;
ALTER TABLE usage_events DROP COLUMN quota_tokens;
ALTER TABLE users DROP COLUMN monthly_tokens, DROP COLUMN tpm;
ALTER TABLE api_keys DROP COLUMN monthly_tokens, DROP COLUMN tpm;
