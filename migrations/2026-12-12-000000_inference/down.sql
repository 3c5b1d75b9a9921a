-- Its indexes go with the table.
DROP TABLE usage_events;
DROP INDEX model_versions_servable_idx;
ALTER TABLE model_versions DROP COLUMN upstream_api_key;
