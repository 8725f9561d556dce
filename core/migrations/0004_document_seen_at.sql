-- Per document: when the version stored (or the deletion recorded) was read from its source,
-- by our clock (epoch seconds): the fetch, the listing that carried it, the push, the delete
-- request. It breaks ties that updated_at cannot (equal timestamps, deletes, which have none,
-- and pushed timestamps that are wrong), so the newest truth wins. See workers/sync.py.
ALTER TABLE documents ADD COLUMN seen_at double precision;
-- The newest confirmed deletion's read time, kept even when that delete was ignored because a
-- newer version was already stored: any version read before it is outdated (push, delete,
-- re-push processed in any order ends with the re-push).
ALTER TABLE documents ADD COLUMN deleted_seen_at double precision;
