<?php
// The worker loop the php-cli contenders run (supervisord's programs and the
// fork parent's children): the standard shape of a PHP queue worker, with a
// SIGTERM/SIGINT handler so that a stop lets the current cycle finish.

function bench_run_worker(string $class, array $job): int
{
    require_once __DIR__ . '/../vendor/autoload.php';
    $stop = false;
    pcntl_async_signals(true);
    $handler = static function () use (&$stop): void {
        $stop = true;
    };
    pcntl_signal(SIGTERM, $handler);
    pcntl_signal(SIGINT, $handler);
    $worker = new $class();
    $worker->start($job);
    while (!$stop) {
        $worker->cycle();
    }
    return 0;
}
