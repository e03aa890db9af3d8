<?php
namespace Bench;

use PHPLRPM\ConfigurationSource;

/** The farm configuration the harness writes for each lrpm-host run. */
final class JsonJobs implements ConfigurationSource
{
    public function __construct(private string $file)
    {
    }

    public function loadConfiguration(): array
    {
        return json_decode((string) file_get_contents($this->file), true, 512, JSON_THROW_ON_ERROR);
    }
}
