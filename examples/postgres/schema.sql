-- The PostgreSQL example's jobs table (the same columns as the SQLite
-- example's) and the trigger that tells listening farms about a change:
-- any INSERT, UPDATE or DELETE sends NOTIFY lrpm_jobs at commit.
CREATE TABLE IF NOT EXISTS jobs (
    id text PRIMARY KEY,
    name text NOT NULL,
    worker_class text NOT NULL,
    mtime bigint NOT NULL,
    worker_config jsonb NOT NULL DEFAULT '{}',
    replicas integer,
    max_cycles integer,
    max_lifetime_seconds integer,
    memory_limit_mb integer,
    short_run_time_seconds integer,
    shutdown_timeout_seconds integer,
    cycle_interval_seconds double precision
);

CREATE OR REPLACE FUNCTION lrpm_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lrpm_jobs', TG_OP);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS lrpm_jobs_changed ON jobs;
CREATE TRIGGER lrpm_jobs_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION lrpm_jobs_notify();
