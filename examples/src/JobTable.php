<?php
namespace Example;

use PDO;

/**
 * The `jobs` table of a SQLite file: what the configuration source reads
 * and what examples/sqlite/jobs.php edits. One row per job; every change
 * raises the row's mtime, which is how lrpm-host knows to restart it.
 */
final class JobTable
{
    /** Job field => column, for the optional fields (NULL = the host's default). */
    public const FIELDS = [
        'replicas' => 'replicas',
        'maxCycles' => 'max_cycles',
        'maxLifetimeSeconds' => 'max_lifetime_seconds',
        'memoryLimitMb' => 'memory_limit_mb',
        'shortRunTimeSeconds' => 'short_run_time_seconds',
        'shutdownTimeoutSeconds' => 'shutdown_timeout_seconds',
        'cycleIntervalSeconds' => 'cycle_interval_seconds',
    ];

    private const SCHEMA = <<<'SQL'
        CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            worker_class TEXT NOT NULL,
            mtime INTEGER NOT NULL,
            worker_config TEXT NOT NULL DEFAULT '{}',   -- a JSON object
            replicas INTEGER,
            max_cycles INTEGER,
            max_lifetime_seconds INTEGER,
            memory_limit_mb INTEGER,
            short_run_time_seconds INTEGER,
            shutdown_timeout_seconds INTEGER,
            cycle_interval_seconds REAL
        )
        SQL;

    private PDO $db;

    /** Opens (and on first use creates and seeds) the database at $file. */
    public function __construct(private string $file)
    {
        $dir = dirname($file);
        is_dir($dir) || mkdir($dir, 0777, true);
        $this->db = new PDO('sqlite:' . $file, null, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
        // Readers (the farm) never wait for a writer (jobs.php) and the other way round.
        $this->db->exec('PRAGMA busy_timeout = 5000');
        $this->db->exec('PRAGMA journal_mode = WAL');
        $this->db->exec('BEGIN IMMEDIATE');
        $exists = $this->db->query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'")->fetchColumn();
        if ($exists === false) {
            $this->db->exec(self::SCHEMA);
            $this->seed();
        }
        $this->db->exec('COMMIT');
    }

    /** The default path: $LRPM_JOBS_DB, else examples/sqlite/var/jobs.sqlite. */
    public static function defaultFile(): string
    {
        $env = getenv('LRPM_JOBS_DB');
        return is_string($env) && $env !== '' ? $env : dirname(__DIR__) . '/sqlite/var/jobs.sqlite';
    }

    /** @return array<string, array<string, mixed>> the jobs as lrpm-host wants them */
    public function jobs(): array
    {
        return self::fromRows($this->db->query('SELECT * FROM jobs ORDER BY id', PDO::FETCH_ASSOC));
    }

    /**
     * Rows of a jobs table (this one, or PostgresSource's of the same shape)
     * as lrpm-host's jobs, keyed by id.
     *
     * @param iterable<array<string, mixed>> $rows
     * @return array<string, array<string, mixed>>
     */
    public static function fromRows(iterable $rows): array
    {
        $jobs = [];
        foreach ($rows as $row) {
            $job = [
                'name' => $row['name'],
                'workerClass' => $row['worker_class'],
                'mtime' => (int) $row['mtime'],
                // Invalid JSON becomes null: lrpm-host drops that job alone, naming it.
                'workerConfig' => json_decode($row['worker_config'], true),
            ];
            foreach (self::FIELDS as $field => $column) {
                if ($row[$column] !== null) {
                    $job[$field] = $column === 'cycle_interval_seconds' ? (float) $row[$column] : (int) $row[$column];
                }
            }
            $jobs[(string) $row['id']] = $job;
        }
        return $jobs;
    }

    public function add(string $id, string $workerClass, string $name, array $workerConfig, array $fields): void
    {
        $this->db->prepare('INSERT INTO jobs (id, name, worker_class, mtime, worker_config) VALUES (?, ?, ?, ?, ?)')
            ->execute([$id, $name, $workerClass, time(), json_encode((object) $workerConfig)]);
        $this->set($id, [], $fields, []);
    }

    /**
     * Changes a job and raises its mtime (to now, or one more when it is
     * already now or later), so the farm restarts it with the new values.
     *
     * @param array<string, mixed> $columns name, worker_class
     * @param array<string, int|float|null> $fields job fields of self::FIELDS
     * @param array<string, mixed> $config workerConfig entries (null removes one)
     */
    public function set(string $id, array $columns, array $fields, array $config): int
    {
        $this->db->exec('BEGIN IMMEDIATE');
        $row = $this->db->prepare('SELECT mtime, worker_config FROM jobs WHERE id = ?');
        $row->execute([$id]);
        $row = $row->fetch(PDO::FETCH_ASSOC);
        if ($row === false) {
            $this->db->exec('ROLLBACK');
            throw new \InvalidArgumentException("no job {$id}");
        }
        $workerConfig = json_decode($row['worker_config'], true) ?? [];
        foreach ($config as $key => $value) {
            if ($value === null) {
                unset($workerConfig[$key]);
            } else {
                $workerConfig[$key] = $value;
            }
        }
        $mtime = max(time(), (int) $row['mtime'] + 1);
        $assign = ['mtime = ?', 'worker_config = ?'];
        $values = [$mtime, json_encode((object) $workerConfig)];
        foreach ($columns as $column => $value) {
            $assign[] = "{$column} = ?";
            $values[] = $value;
        }
        foreach ($fields as $field => $value) {
            $assign[] = self::FIELDS[$field] . ' = ?';
            $values[] = $value;
        }
        $values[] = $id;
        $this->db->prepare('UPDATE jobs SET ' . implode(', ', $assign) . ' WHERE id = ?')->execute($values);
        $this->db->exec('COMMIT');
        return $mtime;
    }

    public function remove(string $id): bool
    {
        $delete = $this->db->prepare('DELETE FROM jobs WHERE id = ?');
        $delete->execute([$id]);
        return $delete->rowCount() > 0;
    }

    /** The first jobs of a new database: the example farm. */
    private function seed(): void
    {
        $var = dirname($this->file);
        $insert = $this->db->prepare(
            'INSERT INTO jobs (id, name, worker_class, mtime, worker_config, replicas, short_run_time_seconds)'
            . ' VALUES (?, ?, ?, ?, ?, ?, ?)'
        );
        $insert->execute(['heartbeat', 'heartbeat', Heartbeat::class, 1, '{"every": 2}', null, null]);
        $insert->execute(['spool', 'spool', SpoolConsumer::class, 1,
            json_encode(['spool' => "{$var}/spool", 'done' => "{$var}/done"], JSON_UNESCAPED_SLASHES), 2, null]);
        $insert->execute(['flaky', 'flaky', Flaky::class, 1, '{"crashOneIn": 3}', null, 3]);
    }
}
