<?php
// php bin/fork-parent.php JOBS_JSON_FILE: the php-lrpm model, written for the
// benchmark. The parent loads nothing of the app; it forks one child per job
// and each child loads the autoloader and the framework itself. Like
// php-lrpm's main loop it sleeps up to 1 s at a time, woken early by signals
// (SIGCHLD restarts a dead worker at once) and by commands on stdin:
// "stop ID" (stop and hold) and "start ID".
require __DIR__ . '/worker-loop.php';

$jobs = json_decode((string) file_get_contents($argv[1]), true, 512, JSON_THROW_ON_ERROR);
$pids = [];      // job id => pid
$held = [];      // job id => true
$running = true;

pcntl_signal(SIGCHLD, static function (): void {
});
pcntl_signal(SIGTERM, static function () use (&$running): void {
    $running = false;
});
pcntl_signal(SIGINT, static function () use (&$running): void {
    $running = false;
});

$spawn = static function (string $id) use (&$pids, $jobs): void {
    $pid = pcntl_fork();
    if ($pid === 0) {
        foreach ([SIGCHLD, SIGTERM, SIGINT] as $signal) {
            pcntl_signal($signal, SIG_DFL);
        }
        exit(bench_run_worker($jobs[$id]['workerClass'], $jobs[$id]));
    }
    if ($pid < 0) {
        fwrite(STDERR, "fork failed for job {$id}\n");
        return;
    }
    $pids[$id] = $pid;
};

$reap = static function () use (&$pids): void {
    while (($pid = pcntl_waitpid(-1, $status, WNOHANG)) > 0) {
        $id = array_search($pid, $pids, true);
        if ($id !== false) {
            unset($pids[$id]);
        }
    }
};

foreach (array_keys($jobs) as $id) {
    $spawn((string) $id);
}
stream_set_blocking(STDIN, false);
$stdinOpen = true;
while ($running) {
    $read = $stdinOpen ? [STDIN] : [];
    $none = [];
    if ($read) {
        @stream_select($read, $none, $none, 1);
    } else {
        sleep(1);
    }
    pcntl_signal_dispatch();
    $reap();
    if ($read) {
        $input = fgets(STDIN);
        if ($input === false && feof(STDIN)) {
            $stdinOpen = false;
        } elseif ($input !== false && preg_match('/^(stop|start) (\S+)$/', trim($input), $command)) {
            [, $verb, $id] = $command;
            if ($verb === 'stop') {
                $held[$id] = true;
                if (isset($pids[$id])) {
                    posix_kill($pids[$id], SIGTERM);
                }
            } else {
                unset($held[$id]);
            }
        }
    }
    foreach (array_keys($jobs) as $id) {
        $id = (string) $id;
        if (!isset($pids[$id]) && !isset($held[$id])) {
            $spawn($id);
        }
    }
}

foreach ($pids as $pid) {
    posix_kill($pid, SIGTERM);
}
while ($pids) {
    $pid = pcntl_waitpid(-1, $status);
    if ($pid <= 0) {
        break;
    }
    $id = array_search($pid, $pids, true);
    if ($id !== false) {
        unset($pids[$id]);
    }
}
