-- Who may use a model: its owner and admins always; everyone when it is public; and the users an
-- admin granted it to. Models that existed before are public, so nothing that worked stops
-- working; new ones are private unless created public.

ALTER TABLE models ADD COLUMN visibility text NOT NULL DEFAULT 'public'
    CONSTRAINT models_visibility_known CHECK (visibility IN ('private', 'public'));
ALTER TABLE models ALTER COLUMN visibility SET DEFAULT 'private';

CREATE TABLE model_grants (
    model_id   uuid        NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, user_id)
);

-- Serves the model list of a user (the visibility filter) and the cascade when a user goes.
CREATE INDEX model_grants_user_id_idx ON model_grants (user_id);
