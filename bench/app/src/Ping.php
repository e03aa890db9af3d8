<?php
namespace Bench;

/** The message the workload sends through Messenger. */
final class Ping
{
    public function __construct(public string $payload = '')
    {
    }
}
