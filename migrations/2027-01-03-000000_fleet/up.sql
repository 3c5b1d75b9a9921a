-- Routing to real model-server fleets.

-- The model server's own name for the model (vLLM's --served-model-name, an Ollama tag), put in
-- the `model` field of forwarded OpenAI calls; NULL: the model's name in the registry.
ALTER TABLE model_versions ADD COLUMN served_model text
    CONSTRAINT model_versions_served_model_length CHECK (char_length(served_model) BETWEEN 1 AND 256);
