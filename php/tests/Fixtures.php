<?php
namespace Lrpm\Tests;

/** A worker that records what the host (here the harness) makes it do. */
final class RecordingWorker implements \Lrpm\Worker, \Lrpm\Stoppable
{
    public array $job = [];
    public array $seen = [];
    public int $stops = 0;

    public function start(array $job): void
    {
        $this->job = $job;
        $this->seen[] = ['start', \Lrpm\job_id(), \Lrpm\slot(), \Lrpm\process_kind()];
    }

    public function cycle(): void
    {
        $this->seen[] = ['cycle', \Lrpm\should_stop()];
        \Lrpm\progress('cycle ' . count($this->seen));
        if (count($this->seen) === ($this->job['workerConfig']['recycleAfter'] ?? -1)) {
            \Lrpm\recycle();
        }
    }

    public function stop(): void
    {
        $this->stops++;
    }
}

/** php-lrpm's interface, without a stop hook. */
final class PhpLrpmWorker implements \PHPLRPM\Worker
{
    public int $cycles = 0;

    public function start(array $job): void
    {
    }

    public function cycle(): void
    {
        $this->cycles++;
    }
}
