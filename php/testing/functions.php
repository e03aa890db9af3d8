<?php
// Lrpm\should_stop(), Lrpm\job_id(), Lrpm\slot(), Lrpm\recycle(), Lrpm\progress(),
// Lrpm\process_kind() and Lrpm\fencing_token() outside lrpm-host (php-cli, PHPUnit), answered by the
// running Lrpm\Testing\WorkerHarness (or as a configuration-less process
// when none runs). Inside lrpm-host the functions are native and already
// defined before the bootstrap loads this file: nothing is declared then.

namespace Lrpm;

use Lrpm\Testing\WorkerHarness;

if (!\function_exists('Lrpm\should_stop')) {
    function should_stop(): bool
    {
        return WorkerHarness::current()?->stopRequested() ?? false;
    }
}

if (!\function_exists('Lrpm\job_id')) {
    function job_id(): ?string
    {
        return WorkerHarness::current()?->jobId();
    }
}

if (!\function_exists('Lrpm\slot')) {
    function slot(): ?int
    {
        return WorkerHarness::current()?->slot();
    }
}

if (!\function_exists('Lrpm\recycle')) {
    function recycle(): void
    {
        WorkerHarness::current()?->requestRecycle();
    }
}

if (!\function_exists('Lrpm\progress')) {
    function progress(string $what = ''): void
    {
        WorkerHarness::current()?->recordProgress($what);
    }
}

if (!\function_exists('Lrpm\process_kind')) {
    function process_kind(): string
    {
        return WorkerHarness::current() !== null ? 'worker' : 'config';
    }
}

if (!\function_exists('Lrpm\fencing_token')) {
    // Outside lrpm-host no member holds a claim.
    function fencing_token(): ?int
    {
        return null;
    }
}
