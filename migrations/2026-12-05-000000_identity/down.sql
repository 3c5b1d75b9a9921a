-- The index goes with the column.
ALTER TABLE models DROP COLUMN owner_id;
DROP TABLE api_keys;
DROP TABLE users;
