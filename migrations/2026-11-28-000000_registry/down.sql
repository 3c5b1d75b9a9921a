DROP TABLE model_aliases;
DROP TABLE model_versions;
DROP TABLE models;
