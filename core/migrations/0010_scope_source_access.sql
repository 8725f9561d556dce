-- Issue 11: the access a source last reported for a scope (a private Slack channel's members as
-- emails), so the reconciler can tell when membership changed since the documents were indexed
-- and re-sync them (a missed member_joined/left_channel event is repaired). NULL: never
-- recorded (the first pass records it and re-syncs once).
ALTER TABLE scopes ADD COLUMN IF NOT EXISTS source_access text[];
