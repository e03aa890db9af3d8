<?php
namespace Example;

use Lrpm\ConfigurationSource;
use PDO;

/**
 * Push configuration from PostgreSQL (run lrpm-host with --interval=0):
 * LISTEN lrpm_jobs, then each loadConfiguration() waits for a NOTIFY (the
 * jobs table's trigger sends one at every committed change) for at most
 * `wait` seconds, and returns the jobs. The wait has a timeout and a stop
 * signal interrupts it, so a stop of the farm is never held up.
 *
 * A lost connection is not thrown (that would restart the configuration
 * process): the source logs it, waits (1, 2, 4, ... up to 30 s, a stop cuts
 * the wait short) and returns the last jobs it read, so the farm keeps its
 * last good configuration, then connects again, LISTENs first and reads the
 * table, so no change made meanwhile is missed. Only the very first
 * connection failing is an error (the host retries it, then gives up: a
 * farm that never had its jobs must not look healthy).
 */
final class PostgresSource implements ConfigurationSource
{
    private ?PDO $db = null;
    private ?array $lastGood = null;
    private float $backoff = 1.0;

    public function __construct(private string $dsn, private float $wait = 5.0)
    {
    }

    public function loadConfiguration(): array
    {
        try {
            if ($this->db === null) {
                $this->connect();
            } else {
                $this->waitForChange();
            }
            $jobs = $this->read();
            $this->lastGood = $jobs;
            $this->backoff = 1.0;
            return $jobs;
        } catch (\PDOException $e) {
            $this->db = null;
            if ($this->lastGood === null) {
                throw $e;
            }
            fwrite(STDERR, sprintf("postgres: %s; keeping the last jobs, reconnecting in %.0f s\n",
                trim(strtok($e->getMessage(), "\n")), $this->backoff));
            usleep((int) ($this->backoff * 1e6)); // a stop signal ends it at once
            $this->backoff = min($this->backoff * 2, 30.0);
            return $this->lastGood;
        }
    }

    private function connect(): void
    {
        $db = new PDO($this->dsn, null, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 3]);
        // LISTEN before reading: a change committed after the read is notified.
        $db->exec('LISTEN lrpm_jobs');
        $this->db = $db;
        if ($this->lastGood !== null) {
            fwrite(STDERR, "postgres: reconnected\n");
        }
    }

    /** Blocks until a NOTIFY arrives or `wait` seconds pass; drains the notifications. */
    private function waitForChange(): void
    {
        if ($this->db->pgsqlGetNotify(PDO::FETCH_ASSOC, (int) ($this->wait * 1000)) !== false) {
            while ($this->db->pgsqlGetNotify(PDO::FETCH_ASSOC, 0) !== false) {
            }
        }
    }

    private function read(): array
    {
        return JobTable::fromRows($this->db->query('SELECT * FROM jobs ORDER BY id', PDO::FETCH_ASSOC));
    }
}
