<?php
// The runner: compiled in every PHP process lrpm-host forks (never in the
// supervisor). It is embedded in the binary and evaluated by the C shim, so
// the worker loop runs with a PHP frame on the stack and uncaught exceptions
// are caught here instead of becoming fatal errors in C.
//
// Exit codes are part of the public contract (README "Exit codes"). Their
// one table is src/exit_code.rs: the params carry it ("exitCodes") and
// define_exit_codes() turns it into the Lrpm\Internal\EXIT_* constants used
// below, before anything can exit.

namespace Lrpm\Internal;

function define_exit_codes(array $codes): void
{
    foreach ($codes as $name => $code) {
        \define(__NAMESPACE__ . '\\' . $name, $code);
    }
}

// This process's resident set in bytes, from /proc/self/statm (0 if unreadable).
function resident_bytes(): int
{
    $statm = @\file_get_contents('/proc/self/statm');
    if ($statm === false) {
        return 0;
    }
    $fields = \explode(' ', $statm);
    return (int) ($fields[1] ?? 0) * 4096;
}

function say(string $message): void
{
    \fwrite(\STDERR, 'lrpm-host: ' . $message . \PHP_EOL);
}

function describe_throwable(\Throwable $e): string
{
    return 'PHP Fatal error:  Uncaught ' . $e . \PHP_EOL
        . '  thrown in ' . $e->getFile() . ' on line ' . $e->getLine();
}

// One line: the class, the message and where it was thrown.
function describe_brief(\Throwable $e): string
{
    return \get_class($e) . ': ' . \str_replace(["\r", "\n"], ' ', $e->getMessage())
        . ' (' . $e->getFile() . ':' . $e->getLine() . ')';
}

// Lrpm\* (the interfaces, Lrpm\Task and its classes) and the php-lrpm
// names, defined only when nobody else defines them:
// an app that ships php-lrpm in vendor/ keeps its own copy. The sources come
// from php/interfaces/ through the params (a single source of truth shared
// with the --preload wrapper).
function register_fallback_autoloader(array $interfaces): void
{
    $self = static function (string $class) use (&$self, $interfaces): void {
        $file = $interfaces['classes'][\strtolower(\ltrim($class, '\\'))] ?? null;
        if ($file === null) {
            return;
        }
        // Registered before the bootstrap (so a bootstrap may declare workers
        // eagerly) yet a fallback: the app's own autoloaders get the first try.
        foreach (\spl_autoload_functions() as $loader) {
            if ($loader !== $self) {
                $loader($class);
                if (\interface_exists($class, false) || \class_exists($class, false)) {
                    return;
                }
            }
        }
        eval($interfaces['sources'][$file]);
    };
    \spl_autoload_register($self);
}

function bootstrap(?string $file, array $interfaces): void
{
    register_fallback_autoloader($interfaces);
    if ($file !== null) {
        if (!\is_file($file)) {
            say("bootstrap file {$file} does not exist (set --bootstrap, or run from a project with vendor/autoload.php)");
            exit(EXIT_BOOTSTRAP_FAILED);
        }
        try {
            require_once $file;
        } catch (\Throwable $e) {
            say("bootstrap {$file} failed: " . \get_class($e) . ': ' . $e->getMessage()
                . ' in ' . $e->getFile() . ' on line ' . $e->getLine());
            exit(EXIT_BOOTSTRAP_FAILED);
        }
    }
}

function implements_any(string $class, array $interfaces): bool
{
    $implemented = \class_implements($class) ?: [];
    foreach ($interfaces as $interface) {
        if (isset($implemented[$interface])) {
            return true;
        }
    }
    return false;
}

// Without a bootstrap, a farm's workers include the source file (a
// single-file farm declares its workers next to its source): its top-level
// code runs once per worker and what it returns is ignored.
function include_source_file(string $file): void
{
    try {
        (static function (string $file): void {
            require_once $file;
        })($file);
    } catch (\Throwable $e) {
        say("source file {$file} (loaded by workers because there is no bootstrap) failed: " . \get_class($e) . ': '
            . $e->getMessage() . ' in ' . $e->getFile() . ' on line ' . $e->getLine());
        exit(EXIT_BOOTSTRAP_FAILED);
    }
}

// The recycle reason logged when the worker itself asked (Lrpm\recycle()).
const RECYCLE_REQUESTED_MESSAGE = 'requested by the worker (Lrpm\recycle())';

// What cycle_done() says after each cycle (it also times OPcache's figures,
// published for the supervisor's metrics every 10 s: csrc/lrpm_shim.c).
const CYCLE_RECYCLE = 0;
const CYCLE_PUBLISH_OPCACHE = 2;

// Publishes opcache_get_status()'s memory and hit figures into the shared
// page; false when OPcache is not there or not enabled (nothing to publish,
// ever: the caller stops asking).
function publish_opcache(): bool
{
    if (!\function_exists('opcache_get_status')) {
        return false;
    }
    $status = @\opcache_get_status(false);
    if (!\is_array($status) || empty($status['opcache_enabled'])) {
        return false;
    }
    publish_opcache_figures(
        (int) ($status['memory_usage']['used_memory'] ?? 0),
        (int) ($status['memory_usage']['free_memory'] ?? 0),
        (int) ($status['opcache_statistics']['hits'] ?? 0),
        (int) ($status['opcache_statistics']['misses'] ?? 0)
    );
    return true;
}

// Who this worker is, set before the bootstrap so that it can ask too:
// Lrpm\job_id() and Lrpm\slot(), $_SERVER, and the environment (putenv),
// which processes the worker starts inherit. With --cluster, the claim's
// fencing token too (LRPM_FENCING_TOKEN): larger at every new claim of the
// unit, for writes that must not come from a member that lost it.
function set_worker_identity(string $jobId, int $slot, ?int $fencingToken = null): void
{
    set_identity($jobId, $slot);
    fencing_token_store($fencingToken, true);
    $_SERVER['LRPM_JOB_ID'] = $jobId;
    $_SERVER['LRPM_SLOT'] = (string) $slot;
    \putenv('LRPM_JOB_ID=' . $jobId);
    \putenv('LRPM_SLOT=' . $slot);
    if ($fencingToken === null) {
        unset($_SERVER['LRPM_FENCING_TOKEN']);
        \putenv('LRPM_FENCING_TOKEN');
    } else {
        $_SERVER['LRPM_FENCING_TOKEN'] = (string) $fencingToken;
        \putenv('LRPM_FENCING_TOKEN=' . $fencingToken);
    }
}

// Bytes of the Zend heap allocated from the system but free after start()
// above which they are given back (memory_get_usage(true) minus
// memory_get_usage()).
const FREE_MEMORY_WORTH_RELEASING = 4 << 20;

function run_worker(array $params): void
{
    $class = \ltrim((string) $params['class'], '\\');
    $job = $params['job'];
    $label = 'job ' . $params['jobId'];
    if (($params['sourceFile'] ?? null) !== null) {
        include_source_file((string) $params['sourceFile']);
    }
    if (!\class_exists($class)) {
        say("{$label}: worker class {$class} does not exist (it must be declared by or autoloadable from the bootstrap)");
        exit(EXIT_BAD_WORKER_CLASS);
    }
    if (!implements_any($class, ['Lrpm\Worker', 'PHPLRPM\Worker'])) {
        say("{$label}: worker class {$class} does not implement Lrpm\\Worker (or PHPLRPM\\Worker)");
        exit(EXIT_BAD_WORKER_CLASS);
    }
    $pid = \getmypid();
    // Lrpm\Task::run() refuses a task beyond this many running.
    \define('Lrpm\Internal\MAX_TASKS', (int) ($params['maxTasks'] ?? 16));
    try {
        $worker = new $class();
        $worker->start($job);
    } catch (\Throwable $e) {
        // A stop that lands in start() (a connection handshake the signal
        // interrupts, a wait the stop's grace cut short) is a stop, not a
        // failure: the exception is its doing.
        if (\Lrpm\should_stop()) {
            say("{$label}: {$class}::start() was interrupted by the stop: " . describe_brief($e));
            exit(EXIT_OK);
        }
        say("{$label}: {$class}::start() failed");
        \fwrite(\STDERR, describe_throwable($e) . \PHP_EOL);
        exit(EXIT_UNCAUGHT);
    }
    // What start() built and dropped (a framework's warm-up, a big fixture)
    // goes back to the kernel instead of staying this process's private
    // memory for its whole life: free chunks and pages of the Zend heap,
    // then glibc's (a few ms for 50 MB; skipped when little is free).
    if (\memory_get_usage(true) - \memory_get_usage() > FREE_MEMORY_WORTH_RELEASING) {
        \Lrpm\Internal\release_free_memory();
    }
    // Lrpm\recycle() from start(): no cycle runs. $recycle is what the log
    // says, $recycleReason the code the supervisor reads from the page.
    $recycle = null;
    $recycleReason = 0;
    if (recycle_requested()) {
        [$recycle, $recycleReason] = [RECYCLE_REQUESTED_MESSAGE, RECYCLE_REQUESTED];
    }
    $opcache = publish_opcache();
    $cyclesLeft = $params['cycles'];
    // Clock mode (cycleIntervalSeconds): cycle() at most once per interval,
    // the rest slept in a wait that a stop ends at once.
    $interval = isset($params['cycleInterval']) ? (float) $params['cycleInterval'] : null;
    $overrunWarnedAt = null;
    // Planned recycles: limits checked between cycles; the host starts a
    // fresh process at once (EXIT_RECYCLE is never backed off).
    $maxCycles = isset($params['maxCycles']) ? (int) $params['maxCycles'] : null;
    $maxLifetime = isset($params['maxLifetime']) ? (float) $params['maxLifetime'] : null;
    $memoryLimit = isset($params['memoryLimitMb']) ? (int) $params['memoryLimitMb'] * 1024 * 1024 : null;
    $startedAt = \hrtime(true);
    $cyclesDone = 0;
    $memoryCheckedAt = 0;
    $resident = 0;
    // next_cycle() is false once a stop was requested, and in a process the
    // worker forked itself; it also collects cyclic garbage between cycles
    // and records in the shared page that a cycle starts.
    while ($recycle === null && \Lrpm\Internal\next_cycle()) {
        // Read only in clock mode: an empty cycle is a few tens of ns.
        $began = $interval !== null ? \hrtime(true) : 0;
        try {
            $worker->cycle();
        } catch (\Throwable $e) {
            if (\getmypid() !== $pid) {
                exit(EXIT_UNCAUGHT);
            }
            // Once a stop is pending, what it interrupted (a read the
            // stop's grace ended, a client that gave up on EINTR) is the
            // stop's doing: the loop ends as a stop, with the stop hook.
            if (\Lrpm\should_stop()) {
                say("{$label}: {$class}::cycle() was interrupted by the stop: " . describe_brief($e));
                break;
            }
            say("{$label}: {$class}::cycle() threw");
            \fwrite(\STDERR, describe_throwable($e) . \PHP_EOL);
            exit(EXIT_UNCAUGHT);
        }
        // Records the cycle (count, duration, heap) in the shared page;
        // CYCLE_RECYCLE once the worker called Lrpm\recycle() (checked before
        // any clock-mode wait, which could be long).
        $done = cycle_done();
        if ($done === CYCLE_RECYCLE) {
            [$recycle, $recycleReason] = [RECYCLE_REQUESTED_MESSAGE, RECYCLE_REQUESTED];
            break;
        }
        if ($cyclesLeft !== null && --$cyclesLeft <= 0) {
            break;
        }
        $cyclesDone++;
        if ($maxCycles !== null && $cyclesDone >= $maxCycles) {
            [$recycle, $recycleReason] = ["maxCycles {$maxCycles} reached", RECYCLE_MAX_CYCLES];
            break;
        }
        if ($maxLifetime !== null && (\hrtime(true) - $startedAt) / 1e9 >= $maxLifetime) {
            $recycle = \sprintf('maxLifetimeSeconds %s reached after %d cycles', $maxLifetime, $cyclesDone);
            $recycleReason = RECYCLE_MAX_LIFETIME;
            break;
        }
        // The Zend heap after every cycle (it costs nothing: a worker whose
        // heap grows fast must not reach memory_limit, a fatal error in the
        // middle of a cycle, between two checks); the resident set costs a
        // read of /proc: at most once a second, the last figure in between.
        if ($memoryLimit !== null) {
            if (\hrtime(true) - $memoryCheckedAt >= 1e9) {
                $memoryCheckedAt = \hrtime(true);
                $resident = resident_bytes();
            }
            $used = \max(\memory_get_usage(true), $resident);
            if ($used > $memoryLimit) {
                $recycle = \sprintf('memoryLimitMb %d exceeded: %.1f MB', $memoryLimit / 1048576, $used / 1048576);
                $recycleReason = RECYCLE_MEMORY;
                break;
            }
        }
        if ($done === CYCLE_PUBLISH_OPCACHE && $opcache) {
            $opcache = publish_opcache();
        }
        if ($interval !== null) {
            $took = (\hrtime(true) - $began) / 1e9;
            if ($took < $interval) {
                wait($interval - $took);
            } elseif ($took > $interval && ($overrunWarnedAt === null || \hrtime(true) - $overrunWarnedAt >= 60e9)) {
                // At most once a minute: an always-late worker must not flood the log.
                say(\sprintf('%s: warning: cycle() took %.3f s, longer than its cycleIntervalSeconds %s', $label, $took, $interval));
                $overrunWarnedAt = \hrtime(true);
            }
        }
    }
    // A process the worker forked itself (pcntl_fork) returns here too: it
    // leaves quietly instead of running a second copy of the loop.
    if (\getmypid() !== $pid) {
        exit(EXIT_OK);
    }
    // The optional stop hook, once, after the last cycle of a stop or a
    // recycle (flush, ack, close); the shutdown timeout still bounds it.
    if ($worker instanceof \Lrpm\Stoppable) {
        try {
            $worker->stop();
        } catch (\Throwable $e) {
            say("{$label}: {$class}::stop() threw");
            \fwrite(\STDERR, describe_throwable($e) . \PHP_EOL);
            exit(EXIT_UNCAUGHT);
        }
    }
    // Tasks still running: a stop waits for them until its grace ends (the
    // rest of the shutdown timeout is the exit's), a recycle as long as a
    // stop's grace would be; then they are killed.
    if (\class_exists('Lrpm\Task', false) && (\Lrpm\Task::running() > 0 || \Lrpm\Pool::helpers() > 0)) {
        \Lrpm\Task::settleAtStop((float) ($job['shutdownTimeoutSeconds'] ?? 10) / 2);
    }
    if ($recycle !== null) {
        say("{$label}: recycling: {$recycle}");
        set_recycle_reason($recycleReason);
        exit(EXIT_RECYCLE);
    }
    exit(EXIT_OK);
}

function load_configuration_source(string $source, bool $isFile): object
{
    $interfaces = ['Lrpm\ConfigurationSource', 'PHPLRPM\ConfigurationSource'];
    if ($isFile) {
        $before = \get_declared_classes();
        $returned = require_once $source;
        if (\is_object($returned)) {
            if (!implements_any(\get_class($returned), $interfaces)) {
                throw new \UnexpectedValueException("{$source} returned an instance of " . \get_class($returned)
                    . ', which does not implement Lrpm\ConfigurationSource');
            }
            return $returned;
        }
        $candidates = \array_values(\array_filter(
            \array_diff(\get_declared_classes(), $before),
            static fn (string $c): bool => !(new \ReflectionClass($c))->isAbstract() && implements_any($c, $interfaces)
        ));
        if (\count($candidates) !== 1) {
            throw new \UnexpectedValueException(\count($candidates) === 0
                ? "{$source} neither returns a configuration source nor declares a class implementing Lrpm\\ConfigurationSource"
                : "{$source} declares several configuration sources (" . \implode(', ', $candidates) . '); return the one to use');
        }
        return new $candidates[0]();
    }
    $class = \ltrim($source, '\\');
    if (!\class_exists($class)) {
        throw new \UnexpectedValueException("configuration source class {$class} does not exist (it must be autoloadable from the bootstrap)");
    }
    if (!implements_any($class, $interfaces)) {
        throw new \UnexpectedValueException("{$class} does not implement Lrpm\\ConfigurationSource");
    }
    return new $class();
}

// Where a worker will find $class: "bootstrap" (the bootstrap declares or
// autoloads it), "source" (the source file declares it and workers load the
// source file too: there is no bootstrap), "sourceOnly" (only the source
// file declares it and workers do not load that file), "missing"; or
// "notWorker" (it implements neither Lrpm\Worker nor PHPLRPM\Worker),
// "notInstantiable" (abstract, or a constructor that is not public).
function class_visibility(string $class, ?string $sourceFile, bool $workersLoadSource): string
{
    $class = \ltrim($class, '\\');
    if (!\class_exists($class)) {
        return 'missing';
    }
    $reflection = new \ReflectionClass($class);
    if (!implements_any($class, ['Lrpm\Worker', 'PHPLRPM\Worker'])) {
        return 'notWorker';
    }
    if (!$reflection->isInstantiable()) {
        return 'notInstantiable';
    }
    $file = $reflection->getFileName();
    if ($sourceFile !== null && $file !== false && \realpath($file) === \realpath($sourceFile)) {
        return $workersLoadSource ? 'source' : 'sourceOnly';
    }
    return 'bootstrap';
}

// Describes each job with the PHP facts the Rust validator cannot see in
// JSON: the PHP type of every field, whether the worker class exists and
// whether a worker can see it.
function describe_jobs(array $configuration, ?string $sourceFile = null, bool $workersLoadSource = false): array
{
    $described = [];
    foreach ($configuration as $id => $job) {
        $entry = ['id' => $id, 'type' => \gettype($job), 'job' => null, 'fieldTypes' => [], 'workerClassExists' => false];
        // JSON cannot carry a key that is not UTF-8: send it escaped and
        // flagged, so two such keys are never merged into one.
        if (\is_string($id) && \preg_match('//u', $id) !== 1) {
            $entry['id'] = \preg_replace_callback('/[\x80-\xff]/', static fn (array $m): string => \sprintf('\\x%02X', \ord($m[0])), $id);
            $entry['idInvalidUtf8'] = true;
        }
        if (\is_array($job)) {
            foreach ($job as $field => $value) {
                $entry['fieldTypes'][(string) $field] = \gettype($value);
            }
            if (isset($job['workerClass']) && \is_string($job['workerClass'])) {
                $entry['workerClassExists'] = \class_exists($job['workerClass']);
                $entry['workerClassVisibility'] = class_visibility($job['workerClass'], $sourceFile, $workersLoadSource);
            }
            try {
                $jobDigest = \md5(\json_encode($job, \JSON_THROW_ON_ERROR | \JSON_PRESERVE_ZERO_FRACTION));
                $entry['job'] = $job;
            } catch (\JsonException $e) {
                $entry['encodeError'] = $e->getMessage();
            }
        }
        // What the entry says, job included, in 32 characters (the job was
        // encoded once above; a large one is not encoded again).
        $head = $entry;
        unset($head['job']);
        $entry['digest'] = \md5(\json_encode($head, \JSON_INVALID_UTF8_SUBSTITUTE) . ($jobDigest ?? ''));
        unset($jobDigest);
        $described[] = $entry;
    }
    return $described;
}

// Entries identical to the ones this process sent in its previous message
// go as their id and digest only: the supervisor kept them, so a large
// unchanged configuration is neither re-sent nor re-parsed at every poll.
function elide_unchanged(array $described, array &$sent): array
{
    $now = [];
    foreach ($described as $i => $entry) {
        $key = (string) $entry['id'];
        if (($sent[$key] ?? null) === $entry['digest']) {
            $described[$i] = ['id' => $entry['id'], 'digest' => $entry['digest'], 'unchanged' => true];
        }
        $now[$key] = $entry['digest'];
    }
    $sent = $now;
    return $described;
}

// The user's class as a message names it ("App\Source", or "the anonymous
// class in /app/source.php").
function class_label(object $object): string
{
    $class = new \ReflectionClass($object);
    return $class->isAnonymous() ? 'the anonymous class in ' . $class->getFileName() : $class->getName();
}

function send_message(array $message): void
{
    $json = \json_encode($message, \JSON_PRESERVE_ZERO_FRACTION | \JSON_UNESCAPED_SLASHES | \JSON_INVALID_UTF8_SUBSTITUTE);
    if ($json === false || !send($json)) {
        say('could not send a message to the supervisor: ' . \json_last_error_msg());
        exit(EXIT_CONFIG_SOURCE_FAILED);
    }
}

// A configuration too large for memory_limit ends the process with PHP's
// bare "Allowed memory size ... exhausted": this says, before it ends, how
// far it got (how many jobs, when it knows) and which setting to raise.
// `$stage` is updated by run_config as it goes.
function explain_memory_exhaustion(array &$stage): void
{
    // PHP 8.4 leaves no room past memory_limit, not even for the first
    // call of this handler: it is called once now (its first call allocates
    // its run-time cache), and memory is kept aside, freed before it reports.
    $reserve = \str_repeat("\0", 256 * 1024);
    $report = static function (bool $warmUp = false) use (&$stage, &$reserve): void {
        if ($warmUp) {
            return;
        }
        $reserve = null;
        $limit = (string) \ini_get('memory_limit');
        // The exhausted heap still holds the configuration: room to report.
        \ini_set('memory_limit', '-1');
        $error = \error_get_last();
        if ($error === null || $error['type'] !== \E_ERROR || !\str_starts_with($error['message'], 'Allowed memory size')) {
            return;
        }
        $where = $stage['jobs'] === null
            ? 'while ' . $stage['what'] . ' ran (in ' . $error['file'] . ' on line ' . $error['line'] . ')'
            : \sprintf('while describing the %s jobs %s returned', \number_format($stage['jobs']), $stage['what']);
        send_message(['type' => 'error', 'message' => \sprintf(
            'the configuration process ran out of PHP memory (memory_limit %s) %s; a configuration this large needs '
            . 'a higher memory_limit: start lrpm-host with -d memory_limit=1G (or -1 for no limit), or set it in '
            . 'the php.ini lrpm-host reads',
            $limit,
            $where
        )]);
    };
    $report(true);
    \register_shutdown_function($report);
}

function run_config(array $params): void
{
    $stage = ['what' => 'the configuration source loaded', 'jobs' => null];
    explain_memory_exhaustion($stage);
    try {
        $source = load_configuration_source((string) $params['source'], (bool) $params['sourceIsFile']);
    } catch (\Throwable $e) {
        send_message(['type' => 'error', 'message' => 'loading the configuration source failed: ' . describe_throwable($e)]);
        exit(EXIT_CONFIG_SOURCE_FAILED);
    }
    $interval = (int) $params['interval'];
    // Push mode calls loadConfiguration() again as soon as it returns; a
    // source that does not block would spin. Calls are paced to this rate
    // (the supervisor warns about it).
    $pushMinInterval = 0.1;
    $lastCall = 0.0;
    // Digest of each entry this process sent last time, by id.
    $sent = [];
    while (true) {
        if ($interval === 0) {
            $since = \microtime(true) - $lastCall;
            if ($since < $pushMinInterval && wait($pushMinInterval - $since) === 'stop') {
                exit(EXIT_OK);
            }
            $lastCall = \microtime(true);
        }
        $stage = ['what' => class_label($source) . '::loadConfiguration()', 'jobs' => null];
        try {
            $configuration = $source->loadConfiguration();
        } catch (\Throwable $e) {
            send_message(['type' => 'error', 'message' => class_label($source) . '::loadConfiguration() failed: ' . describe_throwable($e)]);
            exit(EXIT_CONFIG_SOURCE_FAILED);
        }
        // php-lrpm's PHPLRPM\ConfigurationSource declares no return type.
        if (!\is_array($configuration)) {
            send_message(['type' => 'error', 'message' => class_label($source) . '::loadConfiguration() returned '
                . \get_debug_type($configuration) . ', expected an array of jobs']);
            exit(EXIT_CONFIG_SOURCE_FAILED);
        }
        $stage['jobs'] = \count($configuration);
        send_message(['type' => 'configuration', 'jobs' => elide_unchanged(describe_jobs(
            $configuration,
            $params['sourceIsFile'] ? (string) $params['source'] : null,
            (bool) ($params['workersLoadSource'] ?? false)
        ), $sent)]);
        if ($params['once'] ?? false) {
            exit(EXIT_OK);
        }
        if ($interval > 0) {
            if (wait((float) $interval) === 'stop') {
                exit(EXIT_OK);
            }
        } elseif (\Lrpm\should_stop()) {
            exit(EXIT_OK);
        }
    }
}

function main(): void
{
    $params = \json_decode(params(), true, 512, \JSON_THROW_ON_ERROR);
    define_exit_codes($params['exitCodes']);
    // Workers only: the codes of recycle reasons (src/farm/recycle.rs).
    define_exit_codes($params['recycleReasons'] ?? []);
    // Freed now rather than kept as a possible GC root for the whole run.
    unset($params['exitCodes'], $params['recycleReasons']);
    set_process_kind((string) $params['mode']);
    if ($params['mode'] === 'worker') {
        set_worker_identity((string) $params['jobId'], (int) ($params['slot'] ?? 0), $params['fencingToken'] ?? null);
    }
    bootstrap($params['bootstrap'] ?? null, $params['interfaces']);
    switch ($params['mode']) {
        case 'worker':
            run_worker($params);
            break;
        case 'config':
            run_config($params);
            break;
        case 'zygote':
            run_zygote($params);
            break;
    }
}

// The claim's fencing token, kept for Lrpm\fencing_token(): only the first
// store counts (the runner's, before any user code), like set_identity().
function fencing_token_store(?int $token = null, bool $store = false): ?int
{
    static $stored = false, $value = null;
    if ($store && !$stored) {
        $stored = true;
        $value = $token;
    }
    return $value;
}

// The zygote (the default; not with --no-zygote): the bootstrap ran once, here; each request from
// the supervisor forks a worker that continues below with that worker's
// params, inside this request, with everything the bootstrap built. The
// zygote itself never runs worker code.
function run_zygote(array $params): void
{
    // Compiled once here, so a worker's first Lrpm\Task::run() costs no
    // compilation (workers share these classes copy-on-write).
    \class_exists('Lrpm\Task');
    $request = zygote_serve((int) $params['socket'], (string) ($params['bootstrap'] ?? ''));
    if ($request === null) {
        exit(EXIT_OK);
    }
    $worker = \json_decode($request, true, 512, \JSON_THROW_ON_ERROR);
    unset($worker['exitCodes'], $worker['recycleReasons']);
    // The request began in the zygote, maybe hours ago: as far as the
    // worker can tell, it began now, as a php-cli script's would.
    $now = \microtime(true);
    $_SERVER['REQUEST_TIME_FLOAT'] = $now;
    $_SERVER['REQUEST_TIME'] = (int) $now;
    set_worker_identity((string) $worker['jobId'], (int) ($worker['slot'] ?? 0), $worker['fencingToken'] ?? null);
    run_worker($worker);
}

main();

namespace Lrpm;

// With --cluster, the fencing token of the claim this worker's unit runs
// under: larger at every new claim of the unit, so a store that keeps the
// largest token it saw can refuse writes from a member that lost the unit
// (docs/deploy.md). Null outside a cluster, for every-host jobs and in the
// configuration process. Declared here, before the bootstrap, so the
// Composer package's fallback (testing/functions.php) stays out of the way.
function fencing_token(): ?int
{
    return Internal\fencing_token_store();
}
