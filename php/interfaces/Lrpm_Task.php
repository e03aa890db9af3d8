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
     * @param resource $socket
     */
    public function __construct(private int $pid, private $socket, private float $startedAt)
    {
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
     * @internal The socket Task::any() waits on, null once settled.
     * @return resource|null
     */
    public function socket()
    {
        return $this->settled ? null : $this->socket;
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
        $read = [$this->socket];
        $write = $except = null;
        $seconds = (int) \floor(\max(0.0, $timeout));
        $micros = (int) ((\max(0.0, $timeout) - $seconds) * 1e6);
        if (@\stream_select($read, $write, $except, $seconds, $micros) === 0) {
            return;
        }
        while (true) {
            $chunk = @\fread($this->socket, 1 << 20);
            if ($chunk === false || $chunk === '') {
                break;
            }
            $this->received .= $chunk;
            if ($this->header === null && \strlen($this->received) >= 10) {
                $this->header = \substr($this->received, 0, 10);
                $this->received = \substr($this->received, 10);
            }
        }
        if (\feof($this->socket)) {
            $this->settle();
        }
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
                return TaskHandle::finished(null, self::rebuild(self::describe($e), 0));
            }
        }
        self::collect();
        $limit = \defined('Lrpm\Internal\MAX_TASKS') ? (int) \constant('Lrpm\Internal\MAX_TASKS') : 16;
        if (\count(self::$running) >= $limit) {
            throw new TooManyTasks(\sprintf(
                '%d tasks are running, the most this job allows (maxTasks %d): wait for one (Lrpm\Task::any) before starting another',
                \count(self::$running),
                $limit
            ));
        }
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
            foreach ($handles as $key => $handle) {
                $socket = $handle->socket();
                if ($socket === null) {
                    return $key;
                }
                $sockets[$key] = $socket;
            }
            if ($sockets === []) {
                return null;
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
            foreach ($handles as $key => $handle) {
                if ($handle->socket() !== null && \in_array($handle->socket(), $read, true)) {
                    $handle->receive(0.0);
                }
            }
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
        // The worker's other tasks are not this one's.
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
    private static function writeAll($socket, string $bytes): bool
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
    private static function encode(string $kind, mixed $value): array
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
    private static function uncrossable(mixed $value, string $where, ?\SplObjectStorage $seen = null, int $depth = 0): ?string
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
    private static function describe(\Throwable $e): array
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
