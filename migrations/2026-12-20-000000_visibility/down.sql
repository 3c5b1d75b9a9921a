DROP TABLE model_grants;
ALTER TABLE models DROP COLUMN visibility;
