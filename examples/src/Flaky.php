<?php
namespace Example;

use Lrpm\Worker;

/** Throws now and then: lrpm-host restarts it with exponential backoff. */
final class Flaky implements Worker
{
    private int $oneIn = 3;

    public function start(array $job): void
    {
        $this->oneIn = max(1, (int) $job['workerConfig']['crashOneIn']);
    }

    public function cycle(): void
    {
        if (random_int(1, $this->oneIn) === 1) {
            throw new \RuntimeException('simulated failure');
        }
        fwrite(STDOUT, "fine this time" . PHP_EOL);
        sleep(1);
    }
}
