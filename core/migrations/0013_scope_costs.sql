-- What a reconcile pass costs in requests against the source's budget, per scope (issue 15), so
-- the schedule can be fitted to the budget (core/budget.py): the shortest achievable poll
-- interval and the backfill ETA come from these counts, measured on previous passes.
-- pass_requests counts the pass in progress, saved with each checkpoint, so a pass interrupted
-- (stopped, or paused for the budget) and resumed later still adds up to its whole cost.
CREATE TABLE scope_costs (
    source                text NOT NULL,
    key                   text NOT NULL,
    pass_requests         integer NOT NULL DEFAULT 0,
    pass_pages            integer NOT NULL DEFAULT 0,
    -- The first finished pass (the whole history) and the last finished later pass.
    first_pass_requests   integer,
    first_pass_pages      integer,
    last_pass_requests    integer,
    passes                integer NOT NULL DEFAULT 0,
    -- A pass paused because the budget was used up resumes from its checkpoint then.
    paused_until          timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, key),
    FOREIGN KEY (source, key) REFERENCES scopes (source, key) ON DELETE CASCADE
);
