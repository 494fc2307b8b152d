-- What made a memory change when it was not the caller's own text: an
-- extraction's operation, source turns and extractor plugin (JSON).
ALTER TABLE memory_history ADD COLUMN source JSONB;
