<?php
// IDE stubs for what lrpm-host defines at run time. Never include this file:
// the host provides these (the interfaces through a fallback autoloader
// registered after your bootstrap, the functions natively).

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
        /** @return array<int|string, array{name: string, workerClass: string, mtime: int, workerConfig: array, shortRunTimeSeconds?: int, shutdownTimeoutSeconds?: int, cycleIntervalSeconds?: int|float, restartPolicy?: "always"|"on-failure"|"never", maxFailures?: int, failureWindowSeconds?: int, essential?: bool}> */
        public function loadConfiguration(): array;
    }

    /** True once the host asked this process to stop (SIGTERM/SIGINT) or the supervisor is gone. */
    function should_stop(): bool {}
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
