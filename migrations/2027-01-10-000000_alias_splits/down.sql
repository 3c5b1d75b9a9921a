-- Back to one version per alias: each alias keeps its primary version.
DROP TRIGGER model_alias_versions_after_delete ON model_alias_versions;
DROP FUNCTION model_alias_versions_after_delete();
DELETE FROM model_aliases WHERE version_id IS NULL;
DROP TABLE model_alias_versions;
ALTER TABLE model_aliases DROP CONSTRAINT model_aliases_version_id_fkey;
ALTER TABLE model_aliases ADD CONSTRAINT model_aliases_version_id_fkey
    FOREIGN KEY (version_id) REFERENCES model_versions (id) ON DELETE CASCADE;
ALTER TABLE model_aliases ALTER COLUMN version_id SET NOT NULL;
