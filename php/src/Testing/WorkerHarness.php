<?php
namespace Lrpm\Testing;

use Lrpm\JobValidator;
use Lrpm\Stoppable;

/**
 * Runs a worker as lrpm-host would, in plain PHP (PHPUnit, php-cli):
 * start() with the job as the host passes it (validated, php-lrpm's
 * defaults filled in, a JSON round trip), cycle() as often as you ask,
 * and the stop hook (Lrpm\Stoppable::stop()) at the end. While it runs,
 * Lrpm\job_id(), Lrpm\slot(), Lrpm\should_stop(), Lrpm\recycle() and
 * Lrpm\process_kind() answer as in a worker process (testing/functions.php).
 *
 *     $harness = new WorkerHarness(new OrdersConsumer(), ['workerConfig' => ['queue' => 'orders']], slot: 2);
 *     $harness->start()->cycles(3)->stop();
 *     self::assertSame(3, $harness->cycleCount());
 */
final class WorkerHarness
{
    private static ?self $current = null;

    private bool $stopRequested = false;
    private bool $recycleRequested = false;
    private bool $started = false;
    private bool $stopped = false;
    private int $cycles = 0;
    /** @var list<string> what the worker passed to Lrpm\progress(), in order */
    private array $progress = [];
    private array $job;

    /**
     * @param object $worker an Lrpm\Worker or PHPLRPM\Worker
     * @param array $job fields of the job; name, mtime, workerClass and
     *        workerConfig are filled in when missing. An invalid job fails
     *        here, with the host's messages.
     */
    public function __construct(
        private object $worker,
        array $job = [],
        private int|string $id = 'test',
        private int $slot = 0,
        ?JobValidator $validator = null,
    ) {
        if (!$worker instanceof \Lrpm\Worker && !$worker instanceof \PHPLRPM\Worker) {
            throw new \InvalidArgumentException(get_class($worker) . ' implements neither Lrpm\Worker nor PHPLRPM\Worker');
        }
        $job += ['name' => "test {$id}", 'workerClass' => get_class($worker), 'mtime' => 1, 'workerConfig' => []];
        $validator ??= new JobValidator();
        $errors = $validator->errors($id, $job);
        if ($errors !== []) {
            throw new \InvalidArgumentException("lrpm-host would refuse this job:\n" . implode("\n", $errors));
        }
        $this->job = $validator->withDefaults($job);
    }

    /** The harness whose worker is running (for the Lrpm\ functions), if any. */
    public static function current(): ?self
    {
        return self::$current;
    }

    /** The job start() received. */
    public function job(): array
    {
        return $this->job;
    }

    public function start(): self
    {
        $this->during(fn () => $this->worker->start($this->job));
        $this->started = true;
        return $this;
    }

    /** One cycle() (start() first if it did not run). */
    public function cycle(): self
    {
        if (!$this->started) {
            $this->start();
        }
        $this->during(fn () => $this->worker->cycle());
        $this->cycles++;
        return $this;
    }

    /** Up to $n cycles: fewer when a stop or a recycle is requested (as the host's loop ends then). */
    public function cycles(int $n): self
    {
        for ($i = 0; $i < $n && !$this->stopRequested && !$this->recycleRequested; $i++) {
            $this->cycle();
        }
        return $this;
    }

    /** Runs the stop hook (Lrpm\Stoppable::stop()) once, as a graceful stop does. */
    public function stop(): self
    {
        $this->stopRequested = true;
        if (!$this->stopped && $this->worker instanceof Stoppable) {
            $this->during(fn () => $this->worker->stop());
        }
        $this->stopped = true;
        return $this;
    }

    /** What SIGTERM does: Lrpm\should_stop() turns true (the next cycles() ends). */
    public function requestStop(): self
    {
        $this->stopRequested = true;
        return $this;
    }

    public function stopRequested(): bool
    {
        return $this->stopRequested;
    }

    /** Lrpm\recycle() was called by the worker. */
    public function recycleRequested(): bool
    {
        return $this->recycleRequested;
    }

    public function requestRecycle(): void
    {
        $this->recycleRequested = true;
    }

    /** Lrpm\progress() was called by the worker. */
    public function recordProgress(string $what): void
    {
        $this->progress[] = $what;
    }

    /** @return list<string> what the worker passed to Lrpm\progress() so far, oldest first */
    public function progressNotes(): array
    {
        return $this->progress;
    }

    public function cycleCount(): int
    {
        return $this->cycles;
    }

    public function jobId(): string
    {
        return (string) $this->id;
    }

    public function slot(): int
    {
        return $this->slot;
    }

    private function during(callable $call): void
    {
        $previous = self::$current;
        self::$current = $this;
        try {
            $call();
        } finally {
            self::$current = $previous;
        }
    }
}
