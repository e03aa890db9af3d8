<?php
namespace Bench;

final class PingHandler
{
    public function __invoke(Ping $ping): string
    {
        return 'pong ' . $ping->payload;
    }
}
