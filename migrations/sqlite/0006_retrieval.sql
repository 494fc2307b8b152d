-- Hybrid retrieval (issue 14): the model each vector was made with, so a
-- change of embedder re-embeds in the background while the old vectors keep
-- answering; and full-text search beside the vectors.
ALTER TABLE memories ADD COLUMN embedding_model TEXT NOT NULL DEFAULT 'memhost-local-hash-384';
CREATE INDEX memories_embedding_model ON memories(embedding_model);

-- BM25 over the memory text (Porter stemming, diacritics folded). External
-- content: the text is stored once, in `memories`; the index follows it by
-- rowid through the triggers below. (memhost never runs VACUUM, which could
-- renumber the rowids of a table without an INTEGER PRIMARY KEY; after a
-- manual one, `INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')`.)
CREATE VIRTUAL TABLE memories_fts USING fts5(
    text, content = 'memories', content_rowid = 'rowid', tokenize = 'porter unicode61 remove_diacritics 2'
);
INSERT INTO memories_fts(rowid, text) SELECT rowid, text FROM memories;

CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts(rowid, text) VALUES (new.rowid, new.text);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE OF text ON memories BEGIN
    INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
    INSERT INTO memories_fts(rowid, text) VALUES (new.rowid, new.text);
END;

-- mem0's entity scopes: whom or what a memory is about.
ALTER TABLE memories ADD COLUMN user_id TEXT;
ALTER TABLE memories ADD COLUMN agent_id TEXT;
ALTER TABLE memories ADD COLUMN app_id TEXT;
ALTER TABLE memories ADD COLUMN run_id TEXT;
CREATE INDEX memories_user ON memories(org_id, environment, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX memories_agent ON memories(org_id, environment, agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX memories_app ON memories(org_id, environment, app_id) WHERE app_id IS NOT NULL;
CREATE INDEX memories_run ON memories(org_id, environment, run_id) WHERE run_id IS NOT NULL;
