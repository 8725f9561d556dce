-- Permission-aware search (issue 11): API keys with roles, and operator-set access per scope.
-- See core/apikeys.py and core/access.py.

-- API keys. Only the SHA-256 of each token is stored: tokens are 256 random bits, so a plain
-- fast hash cannot be brute-forced and lets a request be resolved with one indexed lookup (a
-- slow password hash buys nothing for high-entropy secrets and would cost every request).
-- Revocation sets revoked_at; the next request with that key is refused.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    token_hash   text NOT NULL UNIQUE,
    role         text NOT NULL CHECK (role IN ('admin', 'search')),
    -- The identity the key searches as (an email), when it has one.
    principal    text,
    -- A trusted search key may search on behalf of a user (as_user).
    trusted      boolean NOT NULL DEFAULT false,
    name         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Operator-set access for a scope, overriding what the source says: NULL keeps the source's
-- own access; 'public' opens every document of the scope to the workspace; 'restricted'
-- limits them to access_list (emails).
ALTER TABLE scopes
    ADD COLUMN access_type text CHECK (access_type IN ('public', 'restricted')),
    ADD COLUMN access_list text[] NOT NULL DEFAULT '{}';
