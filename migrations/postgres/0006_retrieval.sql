-- Hybrid retrieval (issue 14): the model each vector was made with, so a
-- change of embedder re-embeds in the background while the old vectors keep
-- answering; and full-text search beside the vectors.
ALTER TABLE memories ADD COLUMN embedding_model TEXT NOT NULL DEFAULT 'memhost-local-hash-384';
CREATE INDEX memories_embedding_model ON memories(embedding_model);

-- English stemming; kept by PostgreSQL itself, so no write path can forget it.
ALTER TABLE memories ADD COLUMN text_search tsvector
    GENERATED ALWAYS AS (to_tsvector('english', text)) STORED;
CREATE INDEX memories_text_search ON memories USING gin (text_search);

-- mem0's entity scopes: whom or what a memory is about.
ALTER TABLE memories ADD COLUMN user_id TEXT;
ALTER TABLE memories ADD COLUMN agent_id TEXT;
ALTER TABLE memories ADD COLUMN app_id TEXT;
ALTER TABLE memories ADD COLUMN run_id TEXT;
CREATE INDEX memories_user ON memories(org_id, environment, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX memories_agent ON memories(org_id, environment, agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX memories_app ON memories(org_id, environment, app_id) WHERE app_id IS NOT NULL;
CREATE INDEX memories_run ON memories(org_id, environment, run_id) WHERE run_id IS NOT NULL;
