<?php
namespace Lrpm;

/**
 * Base of every exception a task raises in the worker that waits for it.
 */
class TaskException extends \RuntimeException
{
}

/**
 * The task threw. getMessage() and getCode() are the task's exception's;
 * its class, file, line and trace come as text, and its previous chain as
 * TaskErrors (getPrevious()).
 */
final class TaskError extends TaskException
{
    /** @internal */
    public function __construct(
        private string $taskClass,
        string $message,
        int $code,
        private string $taskFile,
        private int $taskLine,
        private string $taskTrace,
        private int $taskPid,
        ?TaskError $previous = null
    ) {
        parent::__construct($message, $code, $previous);
    }

    /** The class of the exception the task threw ("PDOException"). */
    public function getTaskClass(): string
    {
        return $this->taskClass;
    }

    public function getTaskFile(): string
    {
        return $this->taskFile;
    }

    public function getTaskLine(): int
    {
        return $this->taskLine;
    }

    /** The task's exception's getTraceAsString(). */
    public function getTaskTrace(): string
    {
        return $this->taskTrace;
    }

    public function getTaskPid(): int
    {
        return $this->taskPid;
    }
}

/**
 * The task did not finish in time (wait()'s timeout, or the end of the
 * worker's stop grace): it was killed with SIGKILL.
 */
final class TaskTimeout extends TaskException
{
}

/**
 * The task ended without an answer: killed by a signal (a segfault,
 * SIGKILL), exit(), a fatal error, cancel(), or an answer that could not
 * be read back.
 */
final class TaskFailed extends TaskException
{
    /** @internal */
    public function __construct(string $message, private ?int $exitCode = null, private ?int $signal = null)
    {
        parent::__construct($message);
    }

    /** The status it exited with, or null when a signal ended it. */
    public function getExitCode(): ?int
    {
        return $this->exitCode;
    }

    /** The signal that ended it, or null. */
    public function getSignal(): ?int
    {
        return $this->signal;
    }
}

/**
 * The job's maxTasks are running: wait for one (Task::any) before starting
 * another.
 */
final class TooManyTasks extends TaskException
{
}

/**
 * A task running, or finished: what Task::run() returns.
 */
final class TaskHandle
{
    /** The answer's kind, format and length, once its first 10 bytes are in. */
    private ?string $header = null;
    /** The payload received so far (kept apart from the header: never copied). */
    private string $received = '';
    private bool $settled = false;
    private mixed $result = null;
    private ?\Throwable $failure = null;

    /**
     * @internal
     * @param resource|null $socket
     */
    public function __construct(
        private int $pid,
        private $socket,
        private float $startedAt,
        private ?Pool $pool = null,
        private int $callId = 0
    ) {
    }

    /** @internal A pool's call ended (or was given up). */
    public function resolve(mixed $result, ?\Throwable $failure, int $pid = 0): void
    {
        if ($pid !== 0) {
            $this->pid = $pid;
        }
        $this->settled = true;
        $this->result = $result;
        $this->failure = $failure;
    }

    /**
     * @internal A task already finished: outside lrpm-host (PHPUnit, the
     * WorkerHarness) Task::run() runs the callable at once, in this process.
     */
    public static function finished(mixed $result, ?\Throwable $failure): self
    {
        $handle = new self(0, null, \microtime(true));
        $handle->settled = true;
        $handle->result = $result;
        $handle->failure = $failure;
        return $handle;
    }

    /** The task's process id (0 for a task run inline, outside lrpm-host). */
    public function pid(): int
    {
        return $this->pid;
    }

    /** Whether the task has finished (its answer is in); never blocks. */
    public function done(): bool
    {
        if (!$this->settled) {
            $this->receive(0.0);
        }
        return $this->settled;
    }

    /**
     * The task's return value, once it finished. Null timeout: as long as
     * it takes (bounded by the worker's stop grace when a stop is pending).
     *
     * @throws TaskError   the task threw
     * @throws TaskTimeout not finished within $timeout seconds: killed
     * @throws TaskFailed  it died without an answer, or was cancelled
     */
    public function wait(?float $timeout = null): mixed
    {
        $deadline = $timeout === null ? null : \microtime(true) + \max(0.0, $timeout);
        while (!$this->settled) {
            $left = $deadline === null ? null : $deadline - \microtime(true);
            $grace = Internal\stop_grace_left();
            if ($grace !== null && $grace <= 0.0) {
                $this->kill(new TaskTimeout("task {$this->pid} was still running when the worker's stop grace ended: killed"));
                break;
            }
            if ($left !== null && $left <= 0.0) {
                $this->kill(new TaskTimeout(\sprintf('task %d did not finish within %ss: killed', $this->pid, $this->seconds((float) $timeout))));
                break;
            }
            // A slice at a time, so the stop's grace is looked at again.
            $this->receive(\min($left ?? 1.0, $grace ?? 1.0, 1.0));
        }
        if ($this->failure !== null) {
            throw $this->failure;
        }
        return $this->result;
    }

    /** Kills the task (SIGKILL) if it still runs; wait() then throws TaskFailed. */
    public function cancel(): void
    {
        if (!$this->done()) {
            $this->kill(new TaskFailed("task {$this->pid} was cancelled", null, 9), Task::NOTE_FAILED);
        }
    }

    /**
     * @internal The socket Task::any() waits on, null once settled (or for
     * a pool's call, whose answer comes on its helper's socket).
     * @return resource|null
     */
    public function socket()
    {
        return $this->settled ? null : $this->socket;
    }

    /** @internal The pool of a pool's call, or null. */
    public function pool(): ?Pool
    {
        return $this->settled ? null : $this->pool;
    }

    /**
     * @internal Reads what the task sent, waiting at most $timeout seconds
     * for the first bytes; settles the handle at the end of the answer.
     */
    public function receive(float $timeout): void
    {
        if ($this->settled) {
            return;
        }
        if ($this->pool !== null) {
            $this->pool->pump($timeout);
            return;
        }
        $read = [$this->socket];
        $write = $except = null;
        $seconds = (int) \floor(\max(0.0, $timeout));
        $micros = (int) ((\max(0.0, $timeout) - $seconds) * 1e6);
        if (@\stream_select($read, $write, $except, $seconds, $micros) === 0) {
            return;
        }
        // The header, then the payload whole: the task wrote both at once,
        // so once the header is in, the rest is read in one string of its
        // exact size (no copy while it grows).
        while ($this->header === null || \strlen($this->header) < 10) {
            $chunk = @\fread($this->socket, 10 - \strlen($this->header ?? ''));
            if ($chunk === false || $chunk === '') {
                break;
            }
            $this->header = ($this->header ?? '') . $chunk;
        }
        if ($this->header !== null && \strlen($this->header) === 10 && $this->received === '') {
            $this->received = self::readWhole($this->socket, \unpack('J', \substr($this->header, 2, 8))[1]);
        }
        if (\feof($this->socket)) {
            $this->settle();
        }
    }

    /**
     * @internal Exactly $length bytes (fewer at the end of the stream), read
     * blocking into one string of that size.
     * @param resource $socket
     */
    public static function readWhole($socket, int $length): string
    {
        if ($length <= 0) {
            return '';
        }
        \stream_set_blocking($socket, true);
        $bytes = @\stream_get_contents($socket, $length);
        \stream_set_blocking($socket, false);
        return $bytes === false ? '' : $bytes;
    }

    /** The task closed its end: it has left (or is leaving) through _exit. */
    private function settle(): void
    {
        \fclose($this->socket);
        $answer = Task::decode($this->header ?? '', $this->received, $this->pid);
        $this->received = '';
        if ($answer !== null) {
            // A whole answer: the task closed its end just before its
            // _exit(0); its teardown is not waited for (reaped later).
            Task::reapLater($this->pid);
            [$kind, $value] = $answer;
            if ($kind === 'R') {
                $this->finish(Task::NOTE_SUCCEEDED, $value);
            } else {
                $this->finish(Task::NOTE_FAILED, null, $value);
            }
            return;
        }
        $end = Internal\task_reap($this->pid, true) ?? ['error' => 'not reaped'];
        $this->finish(Task::NOTE_FAILED, null, Task::failure($this->pid, $end, false));
    }

    private function kill(\Throwable $why, int $event = Task::NOTE_TIMED_OUT): void
    {
        if ($this->pool !== null) {
            $this->pool->abandon($this->callId, $why);
            return;
        }
        Internal\task_kill($this->pid, 9);
        @\fclose($this->socket);
        Internal\task_reap($this->pid, true);
        $this->received = '';
        $this->finish($event, null, $why);
    }

    private function finish(int $event, mixed $result, ?\Throwable $failure = null): void
    {
        $this->settled = true;
        $this->result = $result;
        $this->failure = $failure;
        Task::ended($this->pid, $event);
    }

    private function seconds(float $seconds): string
    {
        return \rtrim(\rtrim(\sprintf('%.3f', $seconds), '0'), '.');
    }
}

/**
 * One-off background work: Task::run() forks a task process from the
 * calling worker (it sees everything the worker has built), runs
 * $fn(...$args) there and sends the return value (or the exception) back.
 * The task leaves through _exit: no destructors, no shutdown functions, no
 * output flushed twice, so the worker's connections survive it; a task that
 * needs a connection opens its own. Tasks die with their worker, count
 * against the job's maxTasks, and a graceful stop of the worker waits for
 * them up to its stop grace, then kills them.
 */
final class Task
{
    /** @internal What Lrpm\Internal\task_note() counts (csrc/lrpm_shim.h: LRPM_TASK_*). */
    public const NOTE_STARTED = 1;
    /** @internal */
    public const NOTE_SUCCEEDED = 2;
    /** @internal */
    public const NOTE_FAILED = 3;
    /** @internal */
    public const NOTE_TIMED_OUT = 4;

    /** @var array<int, TaskHandle> running tasks by pid */
    private static array $running = [];
    /** @var array<int, true> tasks that answered and are leaving, not reaped yet */
    private static array $leaving = [];

    /**
     * @throws TooManyTasks the job's maxTasks are running
     * @throws TaskException the fork failed
     */
    public static function run(callable $fn, mixed ...$args): TaskHandle
    {
        if (!\function_exists('Lrpm\Internal\task_fork')) {
            // Outside lrpm-host (unit tests): the same answers, in this process.
            try {
                return TaskHandle::finished($fn(...$args), null);
            } catch (\Throwable $e) {
                return TaskHandle::finished(null, self::rebuildInline($e));
            }
        }
        self::collect();
        self::reserve(1);
        $pair = @\stream_socket_pair(\STREAM_PF_UNIX, \STREAM_SOCK_STREAM, \STREAM_IPPROTO_IP);
        if ($pair === false) {
            throw new TaskException('cannot create the socket pair for a task: ' . (\error_get_last()['message'] ?? 'unknown error'));
        }
        [$ours, $theirs] = $pair;
        try {
            $pid = Internal\task_fork();
        } catch (\Throwable $e) {
            \fclose($ours);
            \fclose($theirs);
            throw new TaskException($e->getMessage(), $e->getCode(), $e);
        }
        if ($pid === 0) {
            self::runHere($ours, $theirs, $fn, $args);
        }
        \fclose($theirs);
        \stream_set_blocking($ours, false);
        $handle = new TaskHandle($pid, $ours, \microtime(true));
        self::$running[$pid] = $handle;
        Internal\task_note(Task::NOTE_STARTED, $pid);
        return $handle;
    }

    /**
     * Waits for every handle; returns their results by the same keys.
     * The first failure is thrown once all have finished (or at the
     * timeout, when those still running are killed: TaskTimeout).
     *
     * @param array<TaskHandle> $handles
     * @return array<mixed>
     */
    public static function all(array $handles, ?float $timeout = null): array
    {
        $deadline = $timeout === null ? null : \microtime(true) + \max(0.0, $timeout);
        $results = [];
        $first = null;
        foreach ($handles as $key => $handle) {
            try {
                $left = $deadline === null ? null : \max(0.0, $deadline - \microtime(true));
                $results[$key] = $handle->wait($left);
            } catch (TaskException $e) {
                $first ??= $e;
            }
        }
        if ($first !== null) {
            throw $first;
        }
        return $results;
    }

    /**
     * Waits until one of the handles has finished; returns its key (its
     * wait() then answers at once). Null when none finished in $timeout.
     *
     * @param array<TaskHandle> $handles
     */
    public static function any(array $handles, ?float $timeout = null): int|string|null
    {
        $deadline = $timeout === null ? null : \microtime(true) + \max(0.0, $timeout);
        while (true) {
            $sockets = [];
            $pools = [];
            foreach ($handles as $key => $handle) {
                $socket = $handle->socket();
                $pool = $handle->pool();
                if ($socket === null && $pool === null) {
                    return $key;
                }
                if ($pool !== null) {
                    $pools[\spl_object_id($pool)] = $pool;
                    foreach ($pool->sockets() as $helper) {
                        $sockets[] = $helper;
                    }
                } else {
                    $sockets[] = $socket;
                }
            }
            if ($sockets === []) {
                // Calls queued in pools with no helper ready yet: let them move.
                foreach ($pools as $pool) {
                    $pool->pump(0.01);
                }
                continue;
            }
            $left = $deadline === null ? 1.0 : \min(1.0, $deadline - \microtime(true));
            $grace = Internal\stop_grace_left();
            if ($left <= 0.0 || ($grace !== null && $grace <= 0.0)) {
                return null;
            }
            $read = \array_values($sockets);
            $write = $except = null;
            $seconds = (int) \floor($left);
            @\stream_select($read, $write, $except, $seconds, (int) (($left - $seconds) * 1e6));
            foreach ($pools as $pool) {
                $pool->pump(0.0);
            }
            foreach ($handles as $key => $handle) {
                if ($handle->socket() !== null && \in_array($handle->socket(), $read, true)) {
                    $handle->receive(0.0);
                }
            }
        }
    }

    /**
     * @internal Throws TooManyTasks unless $more processes fit in the
     * job's maxTasks next to the running tasks and pools' helpers.
     */
    public static function reserve(int $more): void
    {
        $limit = \defined('Lrpm\Internal\MAX_TASKS') ? (int) \constant('Lrpm\Internal\MAX_TASKS') : 16;
        $used = \count(self::$running) + Pool::helpers();
        if ($used + $more > $limit) {
            throw new TooManyTasks(\sprintf(
                '%d tasks are running, the most this job allows (maxTasks %d): wait for one (Lrpm\Task::any) before starting another',
                $used,
                $limit
            ) . ($more > 1 ? " (a pool of {$more} helpers was asked for)" : ''));
        }
    }

    /** How many tasks of this worker are running. */
    public static function running(): int
    {
        self::collect();
        return \count(self::$running);
    }

    /**
     * @internal The worker's end (a stop or a recycle): waits for running
     * tasks at most $limit seconds (and no longer than a pending stop's
     * grace), then kills what is left.
     */
    public static function settleAtStop(float $limit): void
    {
        $deadline = \microtime(true) + $limit;
        Pool::stopAll($limit);
        foreach (self::$running as $handle) {
            try {
                $handle->wait(\max(0.0, $deadline - \microtime(true)));
            } catch (TaskException) {
                // Its worker is ending; nobody waits for its answer.
            }
        }
        foreach (self::$leaving as $pid => $_) {
            Internal\task_reap($pid, true);
        }
        self::$leaving = [];
    }

    /** @internal A handle settled. */
    public static function ended(int $pid, int $event): void
    {
        if (isset(self::$running[$pid])) {
            unset(self::$running[$pid]);
            Internal\task_note($event, $pid);
        }
    }

    /**
     * @internal The task's answer: [kind, value] ("R" and the return value,
     * or "E" and the TaskError), or null when it is not whole.
     */
    public static function decode(string $header, string $payload, int $pid): ?array
    {
        if (\strlen($header) !== 10) {
            return null;
        }
        $kind = $header[0];
        $format = $header[1];
        $length = \unpack('J', \substr($header, 2, 8))[1];
        if (\strlen($payload) !== $length || ($kind !== 'R' && $kind !== 'E')) {
            return null;
        }
        if ($format === 'T') {
            return [$kind, $payload];
        }
        if ($format === 'I' && !\function_exists('igbinary_unserialize')) {
            return ['E', new TaskError(TaskException::class, 'the task answered in igbinary, which this worker does not load', 0, '', 0, '', $pid)];
        }
        $value = $format === 'I' ? @\igbinary_unserialize($payload) : @\unserialize($payload);
        $false = $format === 'I' ? \igbinary_serialize(false) : \serialize(false);
        if ($value === false && $payload !== $false) {
            return ['E', new TaskError(TaskException::class, 'the task\'s answer could not be unserialized in the worker', 0, '', 0, '', $pid)];
        }
        if ($kind === 'E') {
            return ['E', self::rebuild($value, $pid)];
        }
        return ['R', $value];
    }

    /** @internal An exception thrown in this process, as a task's would arrive. */
    public static function rebuildInline(\Throwable $e): TaskError
    {
        return self::rebuild(self::describe($e), 0);
    }

    /** @internal How a task that sent no whole answer ended, in words. */
    public static function failure(int $pid, array $end, bool $answered): TaskFailed
    {
        if (isset($end['error'])) {
            return new TaskFailed("task {$pid} cannot be waited for: {$end['error']}");
        }
        if ($end['signal'] !== null) {
            $name = self::signalName($end['signal']);
            $core = $end['core'] ? ', core dumped' : '';
            return new TaskFailed("task {$pid} was killed by signal {$end['signal']} ({$name}{$core}) before it answered", null, $end['signal']);
        }
        $why = match (true) {
            $answered => 'after answering',
            $end['code'] === 255 => 'without an answer (a fatal error, or exit(255))',
            default => 'without an answer (exit() in the task, or its answer could not be written)',
        };
        return new TaskFailed("task {$pid} exited with status {$end['code']} {$why}", $end['code']);
    }

    private static function signalName(int $signal): string
    {
        return [1 => 'SIGHUP', 2 => 'SIGINT', 3 => 'SIGQUIT', 4 => 'SIGILL', 6 => 'SIGABRT', 7 => 'SIGBUS', 8 => 'SIGFPE',
            9 => 'SIGKILL', 11 => 'SIGSEGV', 13 => 'SIGPIPE', 14 => 'SIGALRM', 15 => 'SIGTERM'][$signal] ?? "signal {$signal}";
    }

    /** @internal A task that answered: reaped once its teardown is over. */
    public static function reapLater(int $pid): void
    {
        if (Internal\task_reap($pid, false) === null) {
            self::$leaving[$pid] = true;
        }
    }

    /** Reaps what finished without anyone asking (done() was never called). */
    private static function collect(): void
    {
        foreach (self::$leaving as $pid => $_) {
            if (Internal\task_reap($pid, false) !== null) {
                unset(self::$leaving[$pid]);
            }
        }
        foreach (self::$running as $handle) {
            $handle->done();
        }
    }

    /**
     * In the task: runs $fn, sends the answer, leaves through _exit.
     *
     * @param resource $ours
     * @param resource $theirs
     */
    private static function runHere($ours, $theirs, callable $fn, array $args): never
    {
        \fclose($ours);
        // The worker's other tasks and its pools' helpers are not this one's.
        Pool::closeInChild();
        foreach (self::$running as $handle) {
            $socket = $handle->socket();
            if ($socket !== null) {
                @\fclose($socket);
            }
        }
        self::$running = [];
        // exit() or a fatal error in $fn leaves with PHP's status before the
        // request's end, so no destructor or shutdown function runs either.
        try {
            $answer = self::encode('R', $fn(...$args));
        } catch (\Throwable $e) {
            $answer = self::encode('E', self::describe($e));
        }
        \stream_set_blocking($theirs, true);
        if (!self::writeAll($theirs, $answer[0]) || !self::writeAll($theirs, $answer[1])) {
            Internal\task_exit(71);
        }
        // The worker sees the end of the answer now, not after this
        // process's memory is torn down.
        \fclose($theirs);
        Internal\task_exit(0);
    }

    /** Writes $bytes whole, a megabyte at a time (no copy of the rest per write). */
    /** @internal */
    public static function writeAll($socket, string $bytes): bool
    {
        $length = \strlen($bytes);
        for ($written = 0; $written < $length; $written += $n) {
            $n = @\fwrite($socket, $written === 0 && $length <= 1 << 20 ? $bytes : \substr($bytes, $written, 1 << 20));
            if ($n === false || $n === 0) {
                return false;
            }
        }
        return true;
    }

    /**
     * The answer: [header, payload], the header being kind, format and
     * the payload's length (apart, so the payload is never copied).
     *
     * @return array{string, string}
     */
    /** @internal */
    public static function encode(string $kind, mixed $value): array
    {
        if ($kind === 'R') {
            $problem = self::uncrossable($value, 'the return value');
            if ($problem !== null) {
                return self::encode('E', self::describe(new TaskException("the task's return value cannot cross to the worker: {$problem}")));
            }
        }
        // A string crosses as it is: no serialized copy of a 50 MB answer.
        if ($kind === 'R' && \is_string($value)) {
            return ['RT' . \pack('J', \strlen($value)), $value];
        }
        $igbinary = \function_exists('igbinary_serialize');
        try {
            $payload = $igbinary ? \igbinary_serialize($value) : \serialize($value);
        } catch (\Throwable $e) {
            if ($kind === 'E') {
                $payload = \serialize(self::describe(new TaskException('the task threw, and its exception could not be serialized: ' . $e->getMessage())));
                $igbinary = false;
            } else {
                return self::encode('E', self::describe(new TaskException("the task's return value cannot cross to the worker: " . $e->getMessage())));
            }
        }
        return [$kind . ($igbinary ? 'I' : 'S') . \pack('J', \strlen($payload)), $payload];
    }

    /**
     * What in $value serialize() would drop or refuse: a closure, a
     * resource, or an object holding one; null when it all crosses.
     */
    /** @internal */
    public static function uncrossable(mixed $value, string $where, ?\SplObjectStorage $seen = null, int $depth = 0): ?string
    {
        if (\is_resource($value) || \gettype($value) === 'resource (closed)') {
            return "a resource (" . \get_resource_type($value) . ") at {$where}";
        }
        if ($depth > 256 || (!\is_array($value) && !\is_object($value))) {
            return null;
        }
        if ($value instanceof \Closure) {
            return "a Closure at {$where}";
        }
        if (\is_object($value)) {
            $seen ??= new \SplObjectStorage();
            if ($seen->contains($value)) {
                return null;
            }
            $seen->attach($value);
            if (\method_exists($value, '__serialize') || \method_exists($value, '__sleep') || $value instanceof \Serializable) {
                return null; // it says itself what crosses
            }
            $class = \get_class($value);
            foreach ((array) $value as $name => $item) {
                $property = \substr((string) $name, (int) \strrpos("\0" . $name, "\0"));
                $problem = self::uncrossable($item, "{$where}->{$property} ({$class})", $seen, $depth + 1);
                if ($problem !== null) {
                    return $problem;
                }
            }
            return null;
        }
        foreach ($value as $key => $item) {
            $problem = self::uncrossable($item, "{$where}[" . \var_export($key, true) . ']', $seen, $depth + 1);
            if ($problem !== null) {
                return $problem;
            }
        }
        return null;
    }

    /** An exception as text, with its previous chain. */
    /** @internal */
    public static function describe(\Throwable $e): array
    {
        return [
            'class' => \get_class($e),
            'message' => $e->getMessage(),
            'code' => \is_int($e->getCode()) ? $e->getCode() : 0,
            'file' => $e->getFile(),
            'line' => $e->getLine(),
            'trace' => $e->getTraceAsString(),
            'previous' => $e->getPrevious() === null ? null : self::describe($e->getPrevious()),
        ];
    }

    private static function rebuild(mixed $description, int $pid): TaskError
    {
        if (!\is_array($description)) {
            return new TaskError(TaskException::class, 'the task sent an unreadable exception', 0, '', 0, '', $pid);
        }
        return new TaskError(
            (string) ($description['class'] ?? ''),
            (string) ($description['message'] ?? ''),
            (int) ($description['code'] ?? 0),
            (string) ($description['file'] ?? ''),
            (int) ($description['line'] ?? 0),
            (string) ($description['trace'] ?? ''),
            $pid,
            isset($description['previous']) ? self::rebuild($description['previous'], $pid) : null
        );
    }
}

/**
 * A pool's queue is full: Pool::call() refuses the call.
 */
final class PoolFull extends TaskException
{
}

/**
 * Marks a helper's method as safe to run twice: a call whose helper died
 * during it is run again, once, on another helper.
 */
#[\Attribute(\Attribute::TARGET_METHOD)]
final class Idempotent
{
}

/**
 * Persistent helper processes, forked from the worker, each holding an
 * instance of one class: PHP Simple Daemon's Worker API. call() sends a
 * method call to an idle helper (queued while all are busy) and returns a
 * TaskHandle: wait() gives what the method returned, or throws as a task's
 * does. A helper that dies is replaced; the call it was running fails
 * (TaskFailed), or runs again once on another helper when the method is
 * #[Lrpm\Idempotent] or called with callIdempotent(). Helpers count against
 * the job's maxTasks, die with the worker, and end with pool's stop() or
 * the worker's. docs/tasks.md.
 */
final class Pool
{
    /** In an answer's call id: the helper leaves after it (maxCalls, memoryLimitMb). */
    private const LEAVING = 1 << 62;

    /** @var array<int, Pool> every running pool of this worker */
    private static array $pools = [];

    /** @var array<int, array{pid: int, socket: resource, ready: bool, call: ?int, calls: int, buffer: string}> by pid */
    private array $helpers = [];
    /** @var \SplQueue<int> call ids waiting for a helper */
    private \SplQueue $queue;
    /** @var array<int, array{handle: TaskHandle, method: string, request: string, idempotent: bool, attempts: int}> */
    private array $calls = [];
    private int $nextCall = 1;
    private bool $stopped = false;
    /** Set while start() waits for the first helpers. */
    private bool $starting = true;
    /** Why a replacement helper could not start: the pool is not refilled after it. */
    private ?\Throwable $broken = null;
    /** @var array<string, bool> */
    private array $idempotent = [];
    /** Outside lrpm-host: the one instance calls run on, in this process. */
    private ?object $inline = null;

    /**
     * Forks $size helpers; each runs `new $class()`, then `$helper->start($config)`
     * when the class has a start() method, and answers calls until the pool
     * ends. Options: `queue` (calls waiting for a helper at most, default
     * 1000), `maxCalls` and `memoryLimitMb` (a helper past either is replaced
     * after its call, as a worker is recycled).
     *
     * @throws TooManyTasks the helpers would exceed the job's maxTasks
     * @throws TaskError    a helper's constructor or start() threw
     */
    public static function start(string $class, int $size, array $config = [], array $options = []): Pool
    {
        if (!\class_exists($class)) {
            throw new TaskException("cannot start a pool of {$class}: the class does not exist");
        }
        if ($size < 1) {
            throw new TaskException("a pool needs at least one helper, {$size} were asked for");
        }
        $queue = (int) ($options['queue'] ?? 1000);
        $maxCalls = isset($options['maxCalls']) ? (int) $options['maxCalls'] : null;
        $memory = isset($options['memoryLimitMb']) ? (int) $options['memoryLimitMb'] : null;
        if ($queue < 0 || ($maxCalls !== null && $maxCalls < 1) || ($memory !== null && $memory < 1)) {
            throw new TaskException('pool options: queue must be 0 or more, maxCalls and memoryLimitMb 1 or more');
        }
        $pool = new Pool($class, $size, $config, $queue, $maxCalls, $memory);
        if (!\function_exists('Lrpm\Internal\task_fork')) {
            // Outside lrpm-host (unit tests): one instance, called in this process.
            try {
                $pool->inline = new $class();
                if (\method_exists($pool->inline, 'start')) {
                    $pool->inline->start($config);
                }
            } catch (\Throwable $e) {
                throw Task::rebuildInline($e);
            }
            return $pool;
        }
        Task::reserve($size);
        self::$pools[\spl_object_id($pool)] = $pool;
        try {
            for ($i = 0; $i < $size; $i++) {
                $pool->fork();
            }
            $pool->awaitReady(30.0);
            $pool->starting = false;
        } catch (\Throwable $e) {
            $pool->stop(0.0);
            throw $e;
        }
        return $pool;
    }

    private function __construct(
        private string $class,
        private int $size,
        private array $config,
        private int $queueLimit,
        private ?int $maxCalls,
        private ?int $memoryLimitMb
    ) {
        $this->queue = new \SplQueue();
        foreach ((new \ReflectionClass($class))->getMethods() as $method) {
            $this->idempotent[\strtolower($method->getName())] = $method->getAttributes(Idempotent::class) !== [];
        }
    }

    /** Calls $method on a helper; see the class. @throws PoolFull */
    public function call(string $method, mixed ...$args): TaskHandle
    {
        return $this->enqueue($method, $args, $this->idempotent[\strtolower($method)] ?? false);
    }

    /** call(), and the call runs again once on another helper if its helper dies during it. */
    public function callIdempotent(string $method, mixed ...$args): TaskHandle
    {
        return $this->enqueue($method, $args, true);
    }

    /** The helpers' pids. */
    public function pids(): array
    {
        return \array_keys($this->helpers);
    }

    /** Calls sent or waiting, not answered yet. */
    public function pending(): int
    {
        return \count($this->calls);
    }

    /**
     * Ends the pool: calls sent or queued are waited for at most $timeout
     * seconds (null: as long as they take, within the worker's stop grace),
     * then the helpers leave (their sockets close) or are killed. Calls
     * left fail with TaskFailed.
     */
    public function stop(?float $timeout = null): void
    {
        $deadline = $timeout === null ? null : \microtime(true) + $timeout;
        while ($this->calls !== [] && $this->helpers !== []) {
            $left = $deadline === null ? 1.0 : $deadline - \microtime(true);
            $grace = Internal\stop_grace_left();
            if ($left <= 0.0 || ($grace !== null && $grace <= 0.0)) {
                break;
            }
            $this->pump(\min($left, 1.0, $grace ?? 1.0));
        }
        $this->stopped = true;
        foreach ($this->calls as $id => $call) {
            $call['handle']->resolve(null, new TaskFailed("the pool of {$this->class} was stopped before the call to {$call['method']}() was answered"));
        }
        $this->calls = [];
        $this->queue = new \SplQueue();
        foreach ($this->helpers as $pid => $helper) {
            @\fclose($helper['socket']);
        }
        // A helper leaves at the end of its socket; one still in a call is killed.
        $until = \microtime(true) + 1.0;
        foreach ($this->helpers as $pid => $helper) {
            while (Internal\task_reap($pid, false) === null) {
                if (\microtime(true) >= $until) {
                    Internal\task_kill($pid, 9);
                    Internal\task_reap($pid, true);
                    break;
                }
                \usleep(1000);
            }
            Internal\task_note(Task::NOTE_SUCCEEDED, $pid);
        }
        $this->helpers = [];
        unset(self::$pools[\spl_object_id($this)]);
    }

    /** @internal In a task or helper: the worker's ends of every helper's socket closed. */
    public static function closeInChild(): void
    {
        foreach (self::$pools as $pool) {
            foreach ($pool->helpers as $helper) {
                @\fclose($helper['socket']);
            }
        }
    }

    /** @internal Helpers of every pool of this worker. */
    public static function helpers(): int
    {
        $n = 0;
        foreach (self::$pools as $pool) {
            $n += \count($pool->helpers);
        }
        return $n;
    }

    /** @internal The worker's end: every pool stops within $limit seconds. */
    public static function stopAll(float $limit): void
    {
        foreach (self::$pools as $pool) {
            $pool->stop($limit);
        }
    }

    /** @internal The helpers' sockets, for Task::any(). @return list<resource> */
    public function sockets(): array
    {
        return \array_values(\array_map(static fn (array $h) => $h['socket'], $this->helpers));
    }

    /**
     * @internal Reads the helpers' answers (waiting at most $timeout for
     * the first), settles their calls, replaces helpers that died or
     * recycled, and sends queued calls to idle helpers.
     */
    public function pump(float $timeout): void
    {
        $this->dispatch();
        if ($this->helpers === []) {
            return;
        }
        $read = $this->sockets();
        $write = $except = null;
        $seconds = (int) \floor(\max(0.0, $timeout));
        $micros = (int) ((\max(0.0, $timeout) - $seconds) * 1e6);
        if (@\stream_select($read, $write, $except, $seconds, $micros) > 0) {
            foreach ($this->helpers as $pid => $helper) {
                if (\in_array($helper['socket'], $read, true)) {
                    $this->readHelper($pid);
                }
            }
        }
        $this->dispatch();
    }

    /** @internal A call given up (its wait() timed out, or cancel()). */
    public function abandon(int $id, \Throwable $why): void
    {
        $call = $this->calls[$id] ?? null;
        if ($call === null) {
            return;
        }
        unset($this->calls[$id]);
        $call['handle']->resolve(null, $why);
        foreach ($this->helpers as $pid => $helper) {
            if ($helper['call'] === $id) {
                // Its helper is stuck in it: replaced.
                Internal\task_kill($pid, 9);
                $this->helperGone($pid, false);
                return;
            }
        }
        // Still queued: the queue drops it when its turn comes.
    }

    private function enqueue(string $method, array $args, bool $idempotent): TaskHandle
    {
        if ($this->stopped) {
            throw new TaskException("the pool of {$this->class} is stopped");
        }
        if (!\method_exists($this->class, $method)) {
            throw new TaskException("{$this->class} has no method {$method}()");
        }
        $problem = Task::uncrossable($args, 'the arguments');
        if ($problem !== null) {
            throw new TaskException("a call to {$this->class}::{$method}() cannot cross to its helper: {$problem}");
        }
        if ($this->queue->count() >= $this->queueLimit && $this->idleHelper() === null) {
            throw new PoolFull(\sprintf(
                'the pool of %s has %d calls waiting for a helper, its queue\'s limit: wait for some (Lrpm\Task::any) first',
                $this->class,
                $this->queue->count()
            ));
        }
        if ($this->inline !== null) {
            try {
                return TaskHandle::finished($this->inline->$method(...$args), null);
            } catch (\Throwable $e) {
                return TaskHandle::finished(null, Task::rebuildInline($e));
            }
        }
        $id = $this->nextCall++;
        $request = \serialize([$id, $method, $args]);
        $handle = new TaskHandle(0, null, \microtime(true), $this, $id);
        $this->calls[$id] = ['handle' => $handle, 'method' => $method, 'request' => $request, 'idempotent' => $idempotent, 'attempts' => 0];
        $this->queue->enqueue($id);
        $this->dispatch();
        return $handle;
    }

    private function idleHelper(): ?int
    {
        foreach ($this->helpers as $pid => $helper) {
            if ($helper['ready'] && $helper['call'] === null) {
                return $pid;
            }
        }
        return null;
    }

    private function dispatch(): void
    {
        while (!$this->queue->isEmpty() && ($pid = $this->idleHelper()) !== null) {
            $id = $this->queue->dequeue();
            $call = $this->calls[$id] ?? null;
            if ($call === null) {
                continue; // abandoned while queued
            }
            $this->calls[$id]['attempts']++;
            $this->helpers[$pid]['call'] = $id;
            $socket = $this->helpers[$pid]['socket'];
            // The idle helper is reading: a request larger than the socket's
            // buffer goes out whole, as fast as it takes it.
            \stream_set_blocking($socket, true);
            $sent = Task::writeAll($socket, \pack('J', \strlen($call['request']))) && Task::writeAll($socket, $call['request']);
            \stream_set_blocking($socket, false);
            if (!$sent) {
                $this->helperGone($pid, true);
            }
        }
    }

    private function readHelper(int $pid): void
    {
        $helper = &$this->helpers[$pid];
        // Answers: call id (8 bytes), then a task's answer (10-byte header,
        // payload); a payload is read whole once its header is in.
        while (true) {
            $chunk = @\fread($helper['socket'], 18 - \strlen($helper['buffer']));
            if ($chunk === false || $chunk === '') {
                break;
            }
            $helper['buffer'] .= $chunk;
            if (\strlen($helper['buffer']) < 18) {
                continue;
            }
            $id = \unpack('J', \substr($helper['buffer'], 0, 8))[1];
            $header = \substr($helper['buffer'], 8, 10);
            $length = \unpack('J', \substr($helper['buffer'], 10, 8))[1];
            $helper['buffer'] = '';
            $payload = TaskHandle::readWhole($helper['socket'], $length);
            if (\strlen($payload) !== $length) {
                break; // it died while answering: its end of file is next
            }
            $answer = Task::decode($header, $payload, $pid);
            unset($payload);
            if ($id === 0) {
                // Its start: ready, or why not.
                if ($answer !== null && $answer[0] === 'E') {
                    unset($helper);
                    $this->broken = $answer[1];
                    $this->helperGone($pid, false);
                    if ($this->starting) {
                        throw $answer[1];
                    }
                    return;
                }
                $helper['ready'] = true;
                continue;
            }
            if ($id & self::LEAVING) {
                $id &= ~self::LEAVING;
                $helper['ready'] = false; // its end of file comes next; then it is replaced
            }
            $helper['call'] = null;
            $helper['calls']++;
            $call = $this->calls[$id] ?? null;
            unset($this->calls[$id]);
            if ($call !== null && $answer !== null) {
                $call['handle']->resolve($answer[0] === 'R' ? $answer[1] : null, $answer[0] === 'E' ? $answer[1] : null, $pid);
            }
        }
        if (\feof($helper['socket'])) {
            unset($helper);
            $this->helperGone($pid, true);
        }
    }

    /** A helper's socket ended: it died, recycled itself, or was killed. */
    private function helperGone(int $pid, bool $reap): void
    {
        $helper = $this->helpers[$pid] ?? null;
        if ($helper === null) {
            return;
        }
        unset($this->helpers[$pid]);
        @\fclose($helper['socket']);
        $end = Internal\task_reap($pid, true) ?? ['error' => 'not reaped'];
        $clean = ($end['code'] ?? null) === 0;
        Internal\task_note($clean ? Task::NOTE_SUCCEEDED : Task::NOTE_FAILED, $pid);
        $id = $helper['call'];
        if ($id !== null && isset($this->calls[$id])) {
            $call = $this->calls[$id];
            if ($call['idempotent'] && $call['attempts'] < 2) {
                // Runs again, first in line.
                $rest = $this->queue;
                $this->queue = new \SplQueue();
                $this->queue->enqueue($id);
                foreach ($rest as $queued) {
                    $this->queue->enqueue($queued);
                }
            } else {
                unset($this->calls[$id]);
                $how = Task::failure($pid, $end, false)->getMessage();
                $call['handle']->resolve(null, new TaskFailed(
                    "the helper running {$this->class}::{$call['method']}() died during the call ({$how})",
                    $end['code'] ?? null,
                    $end['signal'] ?? null
                ));
            }
        }
        if (!$this->stopped && $this->broken === null) {
            $this->fork();
        } elseif ($this->helpers === [] && !$this->stopped) {
            // No helper left to run what waits: it fails with the reason.
            foreach ($this->calls as $call) {
                $call['handle']->resolve(null, $this->broken);
            }
            $this->calls = [];
            $this->queue = new \SplQueue();
        }
    }

    private function fork(): void
    {
        $pair = @\stream_socket_pair(\STREAM_PF_UNIX, \STREAM_SOCK_STREAM, \STREAM_IPPROTO_IP);
        if ($pair === false) {
            throw new TaskException('cannot create the socket pair for a pool helper: ' . (\error_get_last()['message'] ?? 'unknown error'));
        }
        [$ours, $theirs] = $pair;
        $pid = Internal\task_fork();
        if ($pid === 0) {
            \fclose($ours);
            $this->serve($theirs);
        }
        \fclose($theirs);
        \stream_set_blocking($ours, false);
        $this->helpers[$pid] = ['pid' => $pid, 'socket' => $ours, 'ready' => false, 'call' => null, 'calls' => 0, 'buffer' => ''];
        Internal\task_note(Task::NOTE_STARTED, $pid);
    }

    /**
     * In a helper: builds the instance, answers calls until the socket ends
     * (or maxCalls, memoryLimitMb), then leaves through _exit.
     *
     * @param resource $socket
     */
    private function serve($socket): never
    {
        // Nothing of the worker's pools is this helper's.
        self::closeInChild();
        \stream_set_blocking($socket, true);
        $answer = static function (int $id, array $encoded) use ($socket): void {
            [$header, $payload] = $encoded;
            if (!Task::writeAll($socket, \pack('J', $id) . $header) || !Task::writeAll($socket, $payload)) {
                Internal\task_exit(71);
            }
        };
        try {
            $instance = new ($this->class)();
            if (\method_exists($instance, 'start')) {
                $instance->start($this->config);
            }
            $answer(0, Task::encode('R', true));
        } catch (\Throwable $e) {
            $answer(0, Task::encode('E', Task::describe($e)));
            Internal\task_exit(0);
        }
        $calls = 0;
        while (true) {
            $head = self::readExactly($socket, 8);
            if ($head === null) {
                Internal\task_exit(0); // the pool ended
            }
            $request = self::readExactly($socket, \unpack('J', $head)[1]);
            [$id, $method, $args] = $request === null ? [0, '', []] : \unserialize($request);
            if ($request === null) {
                Internal\task_exit(0);
            }
            try {
                $encoded = Task::encode('R', $instance->$method(...$args));
            } catch (\Throwable $e) {
                $encoded = Task::encode('E', Task::describe($e));
            }
            $calls++;
            $leaving = ($this->maxCalls !== null && $calls >= $this->maxCalls)
                || ($this->memoryLimitMb !== null && \memory_get_usage(true) > $this->memoryLimitMb * 1048576);
            // Said with the answer, so the pool sends it nothing more.
            $answer($leaving ? $id | self::LEAVING : $id, $encoded);
            if ($leaving) {
                \fclose($socket);
                Internal\task_exit(0); // replaced by the pool
            }
        }
    }

    /** @param resource $socket */
    private static function readExactly($socket, int $length): ?string
    {
        $bytes = '';
        while (\strlen($bytes) < $length) {
            $chunk = @\fread($socket, \min(1 << 20, $length - \strlen($bytes)));
            if ($chunk === false || $chunk === '') {
                if (\feof($socket)) {
                    return null;
                }
                continue;
            }
            $bytes .= $chunk;
        }
        return $bytes;
    }

    /** Waits until every helper has built its instance. */
    private function awaitReady(float $timeout): void
    {
        $deadline = \microtime(true) + $timeout;
        while (\array_filter($this->helpers, static fn (array $h) => !$h['ready']) !== []) {
            if (\microtime(true) >= $deadline) {
                throw new TaskTimeout("the helpers of the pool of {$this->class} did not start within {$timeout}s");
            }
            $this->pump(0.1);
        }
    }
}
