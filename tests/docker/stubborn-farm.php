<?php
// A single-file farm for tests/docker/check.sh: one worker that blocks
// SIGTERM, so its stop never completes and only a SIGKILL ends it:
// lrpm-host's own after shutdownTimeoutSeconds (STUBBORN_TIMEOUT, default
// 60), or a second stop request.

final class StubbornWorker implements Lrpm\Worker
{
    public function start(array $job): void
    {
        pcntl_sigprocmask(SIG_BLOCK, [SIGTERM]);
        fwrite(STDOUT, "[stubborn] started, SIGTERM blocked" . PHP_EOL);
    }

    public function cycle(): void
    {
        usleep(100_000);
    }
}

final class StubbornSource implements Lrpm\ConfigurationSource
{
    public function loadConfiguration(): array
    {
        return [
            'stubborn' => [
                'name' => 'blocks SIGTERM',
                'workerClass' => StubbornWorker::class,
                'mtime' => 1,
                'workerConfig' => [],
                'shutdownTimeoutSeconds' => (int) (getenv('STUBBORN_TIMEOUT') ?: 60),
            ],
        ];
    }
}
