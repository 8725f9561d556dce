-- Scope leases owned by a process (issue 10): a reconciler that claims a scope names itself
-- (heartbeats.process) and holds it until lease_until, renewing it while its pass runs. Another
-- replica may take the scope once the lease runs out or its owner's heartbeat goes silent, so a
-- killed reconciler's scopes are polled again within about a minute, not after a fixed 10.
ALTER TABLE scopes
    ADD COLUMN lease_owner text,
    ADD COLUMN lease_until timestamptz;
CREATE INDEX scopes_lease_owner ON scopes (lease_owner) WHERE lease_owner IS NOT NULL;
