-- endpoint_url and upstream_api_key hold each version's first endpoint: the others are lost.
DROP TRIGGER model_versions_first_endpoint ON model_versions;
DROP FUNCTION model_versions_first_endpoint();
ALTER TABLE model_versions DROP COLUMN endpoints;
ALTER TABLE model_versions DROP COLUMN supports_stream_usage;
ALTER TABLE model_versions DROP COLUMN served_model;
