-- Canaries and blue/green: an alias points at 1 to 16 versions, each with a weight from 1 to
-- 10,000, and shares its calls between them by weight (the gateway keeps each API key on one of
-- them). Existing aliases become one-version splits of weight 1.

CREATE TABLE model_alias_versions (
    model_id   uuid    NOT NULL,
    alias      text    COLLATE "C" NOT NULL,
    version_id uuid    NOT NULL REFERENCES model_versions (id) ON DELETE CASCADE,
    weight     integer NOT NULL
                       CONSTRAINT model_alias_versions_weight_range CHECK (weight BETWEEN 1 AND 10000),
    PRIMARY KEY (model_id, alias, version_id),
    FOREIGN KEY (model_id, alias) REFERENCES model_aliases (model_id, alias) ON DELETE CASCADE
);

-- Serves the cascade when a version is deleted.
CREATE INDEX model_alias_versions_version_id_idx ON model_alias_versions (version_id);

INSERT INTO model_alias_versions (model_id, alias, version_id, weight)
SELECT model_id, alias, version_id, 1 FROM model_aliases;

-- model_aliases.version_id stays for replicas of the previous build during a rolling upgrade:
-- they read it and send all of the alias's calls there. It holds the split's primary version
-- (the heaviest, the lowest of a tie), written with the split and moved by the trigger below;
-- a version's deletion no longer deletes the alias through it. A later migration drops it.
ALTER TABLE model_aliases ALTER COLUMN version_id DROP NOT NULL;
ALTER TABLE model_aliases DROP CONSTRAINT model_aliases_version_id_fkey;
ALTER TABLE model_aliases ADD CONSTRAINT model_aliases_version_id_fkey
    FOREIGN KEY (version_id) REFERENCES model_versions (id) ON DELETE SET NULL;

-- A version leaving a split (deleted, or not in the alias's new split): the alias goes when its
-- last version goes; otherwise, if the version was the primary, the heaviest left becomes it.
-- In the database so that every way a version goes (its own deletion, its model's) keeps it.
CREATE FUNCTION model_alias_versions_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM model_alias_versions
                   WHERE model_id = OLD.model_id AND alias = OLD.alias) THEN
        DELETE FROM model_aliases WHERE model_id = OLD.model_id AND alias = OLD.alias;
    ELSE
        UPDATE model_aliases SET version_id = (
                SELECT av.version_id
                FROM model_alias_versions av JOIN model_versions v ON v.id = av.version_id
                WHERE av.model_id = OLD.model_id AND av.alias = OLD.alias
                ORDER BY av.weight DESC, v.version
                LIMIT 1)
        WHERE model_id = OLD.model_id AND alias = OLD.alias
          AND (version_id IS NULL OR version_id = OLD.version_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER model_alias_versions_after_delete
    AFTER DELETE ON model_alias_versions
    FOR EACH ROW EXECUTE FUNCTION model_alias_versions_after_delete();
