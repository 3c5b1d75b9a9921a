ALTER TABLE model_versions DROP COLUMN served_model;
