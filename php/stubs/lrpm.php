<?php
// IDE stubs for what lrpm-host defines at run time. Never include this file:
// the host provides these (the interfaces through a fallback autoloader
// registered after your bootstrap, the functions natively). Lrpm\Task and
// its classes are real PHP, in interfaces/Lrpm_Task.php (the package's class
// map; the host loads the same file): docs/tasks.md.

namespace Lrpm {
    interface Worker
    {
        /** Called once in the worker process, with the whole validated job (defaults filled in). */
        public function start(array $job): void;

        /** Called in a loop until the host asks the worker to stop. */
        public function cycle(): void;
    }

    /**
     * Optional, next to Worker: stop() is called once after the last cycle
     * of every graceful stop (flush a batch, ack, close a connection). The
     * job's shutdownTimeoutSeconds still bounds it.
     */
    interface Stoppable
    {
        public function stop(): void;
    }

    interface ConfigurationSource
    {
        /** @return array<int|string, array{name: string, workerClass: string, mtime: int, workerConfig: array, shortRunTimeSeconds?: int, shutdownTimeoutSeconds?: int, cycleIntervalSeconds?: int|float, restartPolicy?: "always"|"on-failure"|"never", maxFailures?: int, failureWindowSeconds?: int, essential?: bool, user?: string}> */
        public function loadConfiguration(): array;
    }

    /** True once the host asked this process to stop (SIGTERM/SIGINT) or the supervisor is gone. */
    function should_stop(): bool {}

    /**
     * The id of the job this worker process runs (an integer id as a string,
     * "42"), set before the bootstrap runs; null in the configuration process.
     * Also in $_SERVER['LRPM_JOB_ID'] and the environment (LRPM_JOB_ID).
     */
    function job_id(): ?string {}

    /**
     * The replica slot of this worker process (0 .. replicas-1: a job with
     * `replicas: 4` runs slots 0 to 3, one process each, and a replacement
     * takes its predecessor's slot); null in the configuration process. Also in
     * $_SERVER['LRPM_SLOT'] and the environment (LRPM_SLOT).
     */
    function slot(): ?int {}

    /**
     * With --cluster, the fencing token of the claim under which this
     * worker's unit runs: etcd's revision of the claim key, larger at every
     * new claim of the unit. Store the largest token seen next to the data
     * and refuse a write that carries a smaller one: a member that lost the
     * unit (a partition, a paused VM) can then no longer write. Null outside
     * a cluster, for every-host jobs and in the configuration process. Also
     * in $_SERVER['LRPM_FENCING_TOKEN'] and the environment.
     */
    function fencing_token(): ?int {}

    /**
     * Asks for a planned recycle: once start() or the current cycle()
     * returns, the stop hook runs (Lrpm\Stoppable) and the process exits 75;
     * the host starts a fresh one at once, without backoff, and counts a
     * recycle. A stop request that is already pending wins (exit 0). No
     * effect in the configuration process.
     */
    function recycle(): void {}

    /**
     * A heartbeat from a long cycle: the worker is alive and moving on,
     * optionally saying what it does now (at most 63 bytes are kept).
     * `lrpmctl status --json` shows the time since (sinceActivityMs,
     * progress), and a job with progressTimeoutSeconds stops a cycle that
     * stays silent longer as stuck. Costs a clock read and a few stores
     * into shared memory: call it as often as is useful. No effect outside
     * a worker.
     */
    function progress(string $what = ''): void {}
}

namespace PHPLRPM {
    /** php-lrpm's name for the worker interface (used only when the app does not ship php-lrpm). */
    interface Worker
    {
        public function start(array $job): void;

        public function cycle(): void;
    }

    /** php-lrpm's name for the configuration source interface. */
    interface ConfigurationSource
    {
        public function loadConfiguration(): array;
    }
}

namespace {
    /** Sets the title shown by ps (the host provides sapi/cli's function). */
    function cli_set_process_title(string $title): bool {}

    function cli_get_process_title(): ?string {}
}

namespace Lrpm {
    /**
     * Where this code runs: "worker", "config" (the configuration process),
     * "zygote" (the process workers are forked from, which runs the
     * bootstrap once) or "task" (a Lrpm\Task process).
     */
    function process_kind(): string {}
}
