<?php
namespace Example;

use Lrpm\Worker;

/** Prints a line every few seconds: the smallest useful worker. */
final class Heartbeat implements Worker
{
    private int $every = 1;
    private int $beats = 0;

    public function start(array $job): void
    {
        $this->every = (int) ($job['workerConfig']['every'] ?? 1);
        fwrite(STDOUT, "started as pid " . getmypid() . PHP_EOL);
    }

    public function cycle(): void
    {
        $this->beats++;
        fwrite(STDOUT, "beat {$this->beats}" . PHP_EOL);
        sleep($this->every); // cut short by SIGTERM: stops are immediate
    }
}
