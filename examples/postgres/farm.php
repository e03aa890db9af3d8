<?php
// The PostgreSQL example's configuration source, in push mode: a change to
// the jobs table (schema.sql: its trigger sends NOTIFY lrpm_jobs) reaches
// the farm at once, without polling.
//
//   psql -f examples/postgres/schema.sql
//   PG_DSN='pgsql:host=127.0.0.1;port=5432;dbname=postgres;user=postgres' \
//       lrpm-host --interval=0 examples/postgres/farm.php
//   psql -c "UPDATE jobs SET mtime = mtime + 1, worker_config = '{\"every\": 1}' WHERE id = 'heartbeat'"

use Example\PostgresSource;

return new PostgresSource(getenv('PG_DSN') ?: 'pgsql:host=127.0.0.1;port=5432;dbname=postgres;user=postgres');
