<?php
// Edits the example farm's jobs table (see farm.php beside this file).
//
//   php jobs.php list
//   php jobs.php add ID CLASS [name=NAME] [FIELD=VALUE ...] [KEY=VALUE ...]
//   php jobs.php set ID [name=NAME] [class=CLASS] [FIELD=VALUE ...] [KEY=VALUE ...]
//   php jobs.php remove ID
//
// FIELD is one of the job fields replicas, maxCycles, maxLifetimeSeconds,
// memoryLimitMb, shortRunTimeSeconds, shutdownTimeoutSeconds,
// cycleIntervalSeconds (an empty value: back to the host's default); any
// other KEY is a workerConfig entry (its VALUE is JSON when it parses as
// JSON, else a string; an empty value removes it). Every change raises the
// job's mtime: the farm restarts the job with the new values at its next
// poll, or at once after `lrpmctl reload`.

require __DIR__ . '/../vendor/autoload.php';

use Example\JobTable;

function usage(): never
{
    fwrite(STDERR, "usage: jobs.php list | add ID CLASS [KEY=VALUE ...] | set ID KEY=VALUE ... | remove ID\n");
    exit(64);
}

/** @return array{0: array<string, mixed>, 1: array<string, mixed>, 2: array<string, mixed>} */
function assignments(array $args): array
{
    $columns = $fields = $config = [];
    foreach ($args as $arg) {
        if (!str_contains($arg, '=')) {
            usage();
        }
        [$key, $value] = explode('=', $arg, 2);
        if ($key === 'name') {
            $columns['name'] = $value;
        } elseif ($key === 'class') {
            $columns['worker_class'] = $value;
        } elseif (isset(JobTable::FIELDS[$key])) {
            $fields[$key] = $value === '' ? null : (is_numeric($value) ? $value + 0 : $value);
        } else {
            $decoded = json_decode($value, true);
            $config[$key] = $value === '' ? null : ($decoded ?? $value);
        }
    }
    return [$columns, $fields, $config];
}

$file = JobTable::defaultFile();
$table = new JobTable($file);
$command = $argv[1] ?? usage();
$id = $argv[2] ?? null;
$after = 'the farm picks it up at its next poll (now: lrpmctl reload)';
switch ($command) {
    case 'list':
        printf("%-12s %-24s %-22s %-11s %s\n", 'ID', 'NAME', 'CLASS', 'MTIME', 'SETTINGS');
        foreach ($table->jobs() as $jobId => $job) {
            $settings = ['workerConfig' => $job['workerConfig']]
                + array_diff_key($job, ['name' => 1, 'workerClass' => 1, 'mtime' => 1, 'workerConfig' => 1]);
            printf("%-12s %-24s %-22s %-11d %s\n", $jobId, $job['name'], $job['workerClass'], $job['mtime'],
                json_encode($settings, JSON_UNESCAPED_SLASHES));
        }
        break;
    case 'add':
        $class = $argv[3] ?? usage();
        [$columns, $fields, $config] = assignments(array_slice($argv, 4));
        $table->add((string) $id, $class, $columns['name'] ?? (string) $id, array_filter($config, fn ($v) => $v !== null),
            array_diff_key($columns, ['name' => 1]) === [] ? $fields : usage());
        echo "added job {$id}: {$after}\n";
        break;
    case 'set':
        [$columns, $fields, $config] = assignments(array_slice($argv, 3));
        $id !== null || usage();
        try {
            $mtime = $table->set($id, $columns, $fields, $config);
        } catch (InvalidArgumentException $e) {
            fwrite(STDERR, $e->getMessage() . "\n");
            exit(1);
        }
        echo "changed job {$id} (mtime {$mtime}): {$after}\n";
        break;
    case 'remove':
        $id !== null || usage();
        if (!$table->remove($id)) {
            fwrite(STDERR, "no job {$id}\n");
            exit(1);
        }
        echo "removed job {$id}: {$after}\n";
        break;
    default:
        usage();
}
