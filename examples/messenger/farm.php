<?php
// The Messenger example's configuration source: one job, 4 replicas of a
// Symfony Messenger consumer on the Redis stream of $MESSENGER_DSN
// (redis://HOST:PORT/STREAM, default redis://127.0.0.1:6379/messages).
//
//   lrpm-host examples/messenger/farm.php
//   php examples/messenger/bin/publish.php 100000     # in another terminal
//   php examples/messenger/bin/stats.php              # handled, duplicates, pending
//
// $MESSENGER_MEMORY_LIMIT_MB sets memoryLimitMb (default 96) and
// $MESSENGER_LEAK_BYTES makes the handler keep that many bytes per message,
// to watch memory recycles happen.

use App\Messenger\Consumer;

return new class implements Lrpm\ConfigurationSource {
    public function loadConfiguration(): array
    {
        $env = static fn (string $name, string $default): string => (getenv($name) ?: $default);
        return [
            'messenger' => [
                'name' => 'messenger',
                'workerClass' => Consumer::class,
                'mtime' => 1,
                'replicas' => (int) $env('MESSENGER_REPLICAS', '4'),
                'memoryLimitMb' => (int) $env('MESSENGER_MEMORY_LIMIT_MB', '96'),
                // A consumer stopped by SIGTERM comes back at once.
                'shortRunTimeSeconds' => 0,
                'workerConfig' => [
                    'dsn' => $env('MESSENGER_DSN', 'redis://127.0.0.1:6379/messages'),
                    'leakBytes' => (int) $env('MESSENGER_LEAK_BYTES', '0'),
                ],
            ],
        ];
    }
};
