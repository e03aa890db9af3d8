<?php
// php bin/worker.php CLASS JOB_JSON [ID]: one worker per php-cli process, the
// way supervisord runs PHP workers. ID (supervisord's %(process_num)d) becomes
// workerConfig.id, so one program line serves every copy.
require __DIR__ . '/worker-loop.php';

if ($argc < 3 || $argc > 4) {
    fwrite(STDERR, "usage: php worker.php CLASS JOB_JSON [ID]\n");
    exit(64);
}
$job = json_decode($argv[2], true, 512, JSON_THROW_ON_ERROR);
if ($argc === 4) {
    $job['workerConfig']['id'] = $argv[3];
}
exit(bench_run_worker($argv[1], $job));
