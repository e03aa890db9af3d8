<?php
namespace Bench;

use PHPLRPM\Worker;

/** The loop-overhead workload: a cycle that does nothing. */
final class EmptyWorker implements Worker
{
    public function start(array $job): void
    {
    }

    public function cycle(): void
    {
    }
}
