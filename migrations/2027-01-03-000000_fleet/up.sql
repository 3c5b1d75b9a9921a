-- Routing to real model-server fleets.

-- The model server's own name for the model (vLLM's --served-model-name, an Ollama tag), put in
-- the `model` field of forwarded OpenAI calls; NULL: the model's name in the registry.
ALTER TABLE model_versions ADD COLUMN served_model text
    CONSTRAINT model_versions_served_model_length CHECK (char_length(served_model) BETWEEN 1 AND 256);

-- Whether the version's model servers accept `stream_options.include_usage`, which the gateway
-- adds to streamed calls that do not ask for usage (false: the call goes as the client sent it).
ALTER TABLE model_versions ADD COLUMN supports_stream_usage boolean NOT NULL DEFAULT true;

-- Several model servers per version: `endpoints` is a JSON array of
-- {"url": text, "weight": 1..1000, "upstream_api_key"?: text (sealed as the column was)}, at most
-- 32, in order. Each version's endpoint_url and upstream_api_key become its one endpoint.
ALTER TABLE model_versions ADD COLUMN endpoints jsonb NOT NULL DEFAULT '[]'
    CONSTRAINT model_versions_endpoints_array
        CHECK (jsonb_typeof(endpoints) = 'array' AND jsonb_array_length(endpoints) <= 32);
UPDATE model_versions
   SET endpoints = jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
           'url', endpoint_url, 'weight', 1, 'upstream_api_key', upstream_api_key)))
 WHERE endpoint_url IS NOT NULL;
-- A credential of a version without an endpoint has no endpoint to belong to: it goes (set it
-- again with the endpoint).
UPDATE model_versions SET upstream_api_key = NULL WHERE endpoint_url IS NULL;

-- `endpoints` is what this build reads and writes. The columns endpoint_url and
-- upstream_api_key stay, always the first endpoint's: model_versions_servable_idx (a version is
-- servable when it has an endpoint, so when endpoint_url is set) and its queries keep working
-- as they are, and so do replicas of the previous build during a rolling upgrade, which read and
-- write only these two columns. A write that changes only them (such a replica's) changes the
-- first endpoint; any write of `endpoints` sets them. A later migration may drop them.
CREATE FUNCTION model_versions_first_endpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.endpoints IS NOT DISTINCT FROM OLD.endpoints
       AND (NEW.endpoint_url IS DISTINCT FROM OLD.endpoint_url
            OR NEW.upstream_api_key IS DISTINCT FROM OLD.upstream_api_key) THEN
        IF NEW.endpoint_url IS NULL THEN
            NEW.endpoints := '[]';
        ELSE
            NEW.endpoints := jsonb_set(
                CASE WHEN jsonb_array_length(NEW.endpoints) = 0 THEN '[{}]'::jsonb
                     ELSE NEW.endpoints END,
                '{0}',
                jsonb_strip_nulls(jsonb_build_object(
                    'url', NEW.endpoint_url,
                    'weight', COALESCE(NEW.endpoints -> 0 -> 'weight', '1'::jsonb),
                    'upstream_api_key', NEW.upstream_api_key)));
        END IF;
    ELSIF TG_OP = 'INSERT' AND jsonb_array_length(NEW.endpoints) = 0
          AND NEW.endpoint_url IS NOT NULL THEN
        NEW.endpoints := jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
            'url', NEW.endpoint_url, 'weight', 1, 'upstream_api_key', NEW.upstream_api_key)));
    END IF;
    NEW.endpoint_url := NEW.endpoints -> 0 ->> 'url';
    NEW.upstream_api_key := NEW.endpoints -> 0 ->> 'upstream_api_key';
    RETURN NEW;
END
$$;

CREATE TRIGGER model_versions_first_endpoint
    BEFORE INSERT OR UPDATE ON model_versions
    FOR EACH ROW EXECUTE FUNCTION model_versions_first_endpoint();
