<?php
namespace Example;

use Lrpm\ConfigurationSource;

/** Jobs from a JSON file; a real app would read a database table. */
final class JsonFileSource implements ConfigurationSource
{
    public function __construct(private string $file)
    {
    }

    public function loadConfiguration(): array
    {
        return json_decode((string) file_get_contents($this->file), true, 512, JSON_THROW_ON_ERROR);
    }
}
