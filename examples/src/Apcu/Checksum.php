<?php
namespace Example\Apcu;

final class Checksum
{
    public static function of(mixed $value): string
    {
        return hash('xxh64', serialize($value));
    }
}
