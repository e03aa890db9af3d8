<?php
// The example farm's configuration source (what `make run` runs): the jobs
// table of a SQLite file, $LRPM_JOBS_DB or examples/sqlite/var/jobs.sqlite,
// created with three jobs on first use. lrpm-host polls it (-i N seconds;
// `lrpmctl reload` polls at once). Change it while the farm runs:
//
//   php examples/sqlite/jobs.php list
//   php examples/sqlite/jobs.php set heartbeat every=1 replicas=2
//   php examples/sqlite/jobs.php add echo 'Example\Heartbeat' every=5
//   php examples/sqlite/jobs.php remove echo
//
// Workers load classes from examples/vendor/autoload.php, the bootstrap
// lrpm-host finds walking up from this folder.

use Example\JobTable;
use Example\SqliteSource;

return new SqliteSource(JobTable::defaultFile());
