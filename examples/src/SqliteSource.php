<?php
namespace Example;

use Lrpm\ConfigurationSource;

/**
 * The jobs from a SQLite file (examples/sqlite/jobs.php edits it). It runs
 * in lrpm-host's configuration process: the database handle it opens is
 * never inherited by workers.
 */
final class SqliteSource implements ConfigurationSource
{
    private ?JobTable $table = null;

    public function __construct(private string $file)
    {
    }

    public function loadConfiguration(): array
    {
        $this->table ??= new JobTable($this->file);
        return $this->table->jobs();
    }
}
