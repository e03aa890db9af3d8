<?php
namespace Lrpm;

/**
 * lrpm-host's job rules (src/job/), for your own tests: the same fields,
 * limits and messages as the host logs them ("job 7: field 'replicas':
 * Invalid data: 0 is below 1 (...)"). Both are tested against the same
 * cases (php/tests/job-cases.json), so they cannot drift.
 *
 *     $validator = new Lrpm\JobValidator();
 *     self::assertSame([], $validator->errors($id, $job));
 *     // or, for a whole configuration:
 *     self::assertSame([], $validator->configurationErrors($source->loadConfiguration()));
 */
final class JobValidator
{
    public const MAX_DURATION_SECONDS = 86400;
    public const MAX_REPLICAS = 10000;
    public const MAX_TASKS = 1024;
    public const DEFAULTS = ['shortRunTimeSeconds' => 5, 'shutdownTimeoutSeconds' => 10];
    /** The integer fields: [smallest, largest] (PHP_INT_MAX: no bound but the type's). */
    private const INTEGER_RANGES = [
        'mtime' => [0, PHP_INT_MAX],
        'shortRunTimeSeconds' => [0, self::MAX_DURATION_SECONDS],
        'shutdownTimeoutSeconds' => [0, self::MAX_DURATION_SECONDS],
        'replicas' => [1, self::MAX_REPLICAS],
        'maxFailures' => [1, PHP_INT_MAX],
        'failureWindowSeconds' => [1, self::MAX_DURATION_SECONDS],
        'maxCycles' => [1, PHP_INT_MAX],
        'maxLifetimeSeconds' => [1, PHP_INT_MAX],
        'memoryLimitMb' => [1, PHP_INT_MAX],
        'cycleTimeoutSeconds' => [1, self::MAX_DURATION_SECONDS],
        'progressTimeoutSeconds' => [1, self::MAX_DURATION_SECONDS],
        'maxTasks' => [1, self::MAX_TASKS],
    ];

    /** Field => [description, required]: php-lrpm's fields, order and descriptions, then lrpm-host's own. */
    public const FIELDS = [
        'mtime' => ['Time of last modification, must be a UTC Unix timestamp integer', true],
        'name' => ['Descriptive job name, must be a string', true],
        'workerConfig' => ['Worker-specific configuration, must be an array', true],
        'workerClass' => ['Worker class, must be a string referencing an existing class', true],
        'shortRunTimeSeconds' => ['Minimum number of seconds a process is expected to run; if the process terminates earlier then this, it will be restarted with backoff', false],
        'shutdownTimeoutSeconds' => ['Time in seconds to wait for SIGCHLD after sending SIGTERM to a child, before killing the child with SIGKILL', false],
        'replicas' => ['How many processes run this job, each with its own slot number from 0, an integer from 1 to 10000 (default 1)', false],
        'cycleIntervalSeconds' => ['Call cycle() at most once per this many seconds (a number above 0), sleeping the rest of the interval', false],
        'restartPolicy' => ['When an exited process is started again: "always" (the default), "on-failure" (exit 0 means done) or "never"', false],
        'maxFailures' => ['Failures (exits other than 0) within failureWindowSeconds after which the job is failed and not restarted, an integer from 1', false],
        'failureWindowSeconds' => ['The window maxFailures counts in, an integer from 1 to 86400 (default 60)', false],
        'maxCycles' => ['Recycle the worker (start a fresh process at once, no backoff) after this many cycles, an integer from 1', false],
        'maxLifetimeSeconds' => ['Recycle the worker after it has run this many seconds, an integer from 1', false],
        'memoryLimitMb' => ['Recycle the worker once its memory (the larger of the Zend heap and the resident set) exceeds this many MB, an integer from 1', false],
        'cycleTimeoutSeconds' => ['A cycle running longer than this many seconds is stuck: the worker is stopped (SIGTERM, then SIGKILL) and the exit counts as a failure, an integer from 1 to 86400', false],
        'progressTimeoutSeconds' => ['A running cycle silent for this many seconds (no Lrpm\\progress() call since it began or since the last call) is stuck: the worker is stopped as by cycleTimeoutSeconds, an integer from 1 to 86400', false],
        'maxTasks' => ['How many Lrpm\\Task processes one worker may run at once, an integer from 1 to 1024 (default 16)', false],
        'essential' => ['When true, the job failing for good shuts the whole farm down (lrpm-host exits 69), a boolean', false],
        'user' => ['The user the job\'s processes run as, "USER" or "USER:GROUP" (names or numeric ids); needs the host to run as root', false],
        'placement' => ['With --cluster, where the job\'s slots run: "cluster" (the default: each slot on exactly one live member) or "every-host" (each member runs all of them)', false],
    ];

    /** @var callable(string): bool */
    private $classExists;

    /** @param null|callable(string): bool $classExists default: class_exists() with autoloading */
    public function __construct(?callable $classExists = null)
    {
        $this->classExists = $classExists ?? static fn (string $class): bool => class_exists($class);
    }

    /** @return list<string> every broken rule of the job, as lrpm-host logs it; [] when valid */
    public function errors(int|string $id, mixed $job): array
    {
        $error = static fn (string $field, string $problem, string $rule): string =>
            "job {$id}: field '{$field}': {$problem} ({$rule})";
        if (!is_array($job)) {
            return [$error('*', 'the job must be an array, got ' . gettype($job), 'each job is an array of fields')];
        }
        $errors = [];
        foreach (self::FIELDS as $field => [$description, $required]) {
            if (!array_key_exists($field, $job)) {
                if ($required) {
                    $errors[] = $error($field, 'Field missing', $description);
                }
                continue;
            }
            $value = $job[$field];
            if (!$this->valid($field, $value)) {
                $errors[] = $error($field, 'Invalid data: ' . $this->problem($field, $value), $description);
            }
        }
        return $errors;
    }

    public function isValid(int|string $id, mixed $job): bool
    {
        return $this->errors($id, $job) === [];
    }

    /** @return list<string> the fields lrpm-host does not know (no effect; logged once, `check --strict` fails) */
    public function unknownFields(int|string $id, array $job): array
    {
        $warnings = [];
        foreach (array_keys($job) as $field) {
            $field = (string) $field;
            if (isset(self::FIELDS[$field])) {
                continue;
            }
            $near = self::nearestField($field);
            $warnings[] = "job {$id}: unknown field '{$field}' is ignored" . ($near !== null
                ? " (did you mean '{$near}'?)"
                : ' (known fields: ' . implode(', ', array_keys(self::FIELDS)) . ')');
        }
        return $warnings;
    }

    /** @return list<string> the errors of every job of a configuration (what loadConfiguration() returns) */
    public function configurationErrors(mixed $configuration): array
    {
        if (!is_array($configuration)) {
            return ['the configuration must be an array of jobs, got ' . gettype($configuration)];
        }
        $errors = [];
        foreach ($configuration as $id => $job) {
            array_push($errors, ...$this->errors($id, $job));
        }
        return $errors;
    }

    /** The job as start() receives it: php-lrpm's defaults filled in, arrays as a JSON round trip gives them. */
    public function withDefaults(array $job): array
    {
        $job += self::DEFAULTS;
        return json_decode(json_encode($job, JSON_THROW_ON_ERROR), true, 512, JSON_THROW_ON_ERROR);
    }

    private function valid(string $field, mixed $value): bool
    {
        $int = is_int($value);
        return match ($field) {
            'name' => is_string($value),
            'workerConfig' => is_array($value),
            'workerClass' => is_string($value) && ($this->classExists)($value) && self::isWorker($value)
                && self::isInstantiable($value),
            'mtime' => $int && $value >= 0,
            'restartPolicy' => in_array($value, ['always', 'on-failure', 'never'], true),
            'placement' => in_array($value, ['cluster', 'every-host'], true),
            'maxFailures', 'maxCycles', 'maxLifetimeSeconds', 'memoryLimitMb' => $int && $value >= 1,
            'failureWindowSeconds', 'cycleTimeoutSeconds', 'progressTimeoutSeconds' => $int && $value >= 1 && $value <= self::MAX_DURATION_SECONDS,
            'essential' => is_bool($value),
            // The shape only: whether the user exists, and whether the host
            // runs as root to switch to it, is the host's to say.
            'user' => is_string($value) && self::isUserSpec($value),
            'replicas' => $int && $value >= 1 && $value <= self::MAX_REPLICAS,
            'maxTasks' => $int && $value >= 1 && $value <= self::MAX_TASKS,
            'cycleIntervalSeconds' => ($int || is_float($value)) && $value > 0 && $value <= self::MAX_DURATION_SECONDS,
            default => $int && $value >= 0 && $value <= self::MAX_DURATION_SECONDS,
        };
    }

    private function problem(string $field, mixed $value): string
    {
        $type = gettype($value);
        $max = self::MAX_DURATION_SECONDS;
        // Range messages only for the fields that hold integers: an integer
        // name is of the wrong type, not out of range.
        $range = self::INTEGER_RANGES[$field] ?? null;
        return match (true) {
            $field === 'cycleIntervalSeconds' && (is_int($value) || is_float($value)) =>
                self::short($value) . " is not above 0 and at most {$max}",
            $field === 'workerClass' && is_string($value) => $this->classProblem($value),
            $range === null || !is_int($value) => "got {$type} " . self::short($value),
            $value < 0 => self::short($value) . ' is negative',
            $field === 'replicas' && $value === 0 =>
                '0 is below 1 (to run no process, hold the job with `lrpmctl stop ID`)',
            $value < $range[0] => self::short($value) . " is below the minimum of {$range[0]}",
            $range[1] === $max => self::short($value) . " is above the maximum of {$max} (one day)",
            default => self::short($value) . " is above the maximum of {$range[1]}",
        };
    }

    private function classProblem(string $class): string
    {
        if (!($this->classExists)($class)) {
            return "class {$class} does not exist";
        }
        if (!self::isWorker($class)) {
            return "class {$class} does not implement Lrpm\\Worker (or PHPLRPM\\Worker)";
        }
        return "class {$class} cannot be instantiated (an abstract class, or a constructor that is not public)";
    }

    /** A class that does not exist here (the check was given) counts as a worker: the host checks it again. */
    private static function isWorker(string $class): bool
    {
        if (!class_exists($class)) {
            return true;
        }
        $implemented = class_implements($class) ?: [];
        return isset($implemented['Lrpm\\Worker']) || isset($implemented['PHPLRPM\\Worker']);
    }

    private static function isInstantiable(string $class): bool
    {
        return !class_exists($class) || (new \ReflectionClass($class))->isInstantiable();
    }

    /** USER or USER:GROUP: names or numeric ids of 1 to 64 letters, digits and ._-@$ (ASCII), not starting with "-". */
    private static function isUserSpec(string $value): bool
    {
        $name = '(?!-)[A-Za-z0-9._@$-]{1,64}';
        return preg_match("/^{$name}(:{$name})?\$/Du", $value) === 1;
    }

    /** The value as JSON, cut after 60 characters (as the host shows it). */
    private static function short(mixed $value): string
    {
        $json = json_encode($value, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
        if ($json === false) {
            $json = 'null';
        }
        // 60 characters (not bytes), without needing mbstring.
        return preg_match('/^.{60}(?=.)/us', $json, $cut) === 1 ? $cut[0] . '…' : $json;
    }

    /** A misspelt field's most likely meaning (same rule as the host). */
    private static function nearestField(string $field): ?string
    {
        $lower = strtolower($field);
        foreach (array_keys(self::FIELDS) as $known) {
            $knownLower = strtolower($known);
            if ($knownLower === $lower || (strlen($lower) >= 4 && str_starts_with($knownLower, $lower))
                || levenshtein($knownLower, $lower) <= 2) {
                return $known;
            }
        }
        return null;
    }
}
