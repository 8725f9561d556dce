-- Issue 12: filtered search without the cliff. The filters every search applies (source, scope,
-- and the caller's access: access_type, access_list), and the exact identifiers hybrid search
-- looks up (a Jira issue key, a GitHub repo), become real columns of each pgvector table,
-- generated from the metadata and covered by one GIN index, so a selective filter reads only the
-- rows it matches (cost proportional to them, not to the table) and an HNSW candidate is checked
-- without de-TOASTing its metadata. See core/index/pgvector.py (query) and docs/architecture.md.
--
-- Each column holds the field's string values as text[]: a string field gives one element, a
-- list field its string elements. `column && ARRAY[values]` is then exactly the metadata filter
-- {field: {"$in": values}} (Pinecone's rule: a list field matches when any element does), which
-- the JSONB translation spells `metadata @> {field: v} OR metadata @> {field: [v]}`.
CREATE OR REPLACE FUNCTION vs_string_values(value jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(value)
        WHEN 'string' THEN ARRAY[value #>> '{}']
        WHEN 'array' THEN ARRAY(SELECT e #>> '{}' FROM jsonb_array_elements(value) AS e
                                WHERE jsonb_typeof(e) = 'string')
        ELSE '{}'::text[]
    END
$$;

-- The columns and index for one vector table (vectors_<dimensions>). PgvectorIndex calls it
-- for the table it creates; below it is applied to the tables that exist already (adding a
-- stored generated column rewrites the table once: seconds for 100k vectors).
CREATE OR REPLACE FUNCTION vs_filter_columns(tbl text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'ALTER TABLE %I
            ADD COLUMN IF NOT EXISTS filter_source text[] NOT NULL
                GENERATED ALWAYS AS (vs_string_values(metadata -> ''source'')) STORED,
            ADD COLUMN IF NOT EXISTS filter_scope text[] NOT NULL
                GENERATED ALWAYS AS (vs_string_values(metadata -> ''scope'')) STORED,
            ADD COLUMN IF NOT EXISTS filter_access_type text[] NOT NULL
                GENERATED ALWAYS AS (vs_string_values(metadata -> ''access_type'')) STORED,
            ADD COLUMN IF NOT EXISTS filter_access_list text[] NOT NULL
                GENERATED ALWAYS AS (vs_string_values(metadata -> ''access_list'')) STORED,
            ADD COLUMN IF NOT EXISTS filter_key text[] NOT NULL
                GENERATED ALWAYS AS (vs_string_values(metadata -> ''key'')) STORED,
            ADD COLUMN IF NOT EXISTS filter_repo text[] NOT NULL
                GENERATED ALWAYS AS (vs_string_values(metadata -> ''repo'')) STORED',
        tbl);
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON %I USING gin
            (filter_source, filter_scope, filter_access_type, filter_access_list, filter_key, filter_repo)',
        tbl || '_filters', tbl);
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables
             WHERE schemaname = current_schema() AND tablename ~ '^vectors_[0-9]+$'
    LOOP
        PERFORM vs_filter_columns(t);
    END LOOP;
END
$$;
