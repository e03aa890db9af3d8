<?php
// php bin/publish.php COUNT [FIRST_ID]: sends COUNT Task messages (ids
// FIRST_ID .. FIRST_ID+COUNT-1) to the stream of $MESSENGER_DSN, encoded by
// Messenger's serializer exactly as RedisTransport::send() does, pipelined
// 1,000 at a time.
require __DIR__ . '/../vendor/autoload.php';

use App\Messenger\Messenger;
use App\Messenger\Task;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

$dsn = getenv('MESSENGER_DSN') ?: 'redis://127.0.0.1:6379/messages';
$count = (int) ($argv[1] ?? 1000);
$first = (int) ($argv[2] ?? 0);
// The consumer group exists before the first message (as the transport's auto_setup makes it).
Messenger::transport($dsn, 'publisher')->setup();
$redis = Messenger::redis($dsn);
$stream = Messenger::stream($dsn);
$serializer = new PhpSerializer();
$started = microtime(true);
for ($id = $first; $id < $first + $count; $id += 1000) {
    $pipe = $redis->multi(\Redis::PIPELINE);
    for ($i = $id; $i < min($id + 1000, $first + $count); $i++) {
        $encoded = $serializer->encode(new Envelope(new Task($i, 'payload ' . $i)));
        $pipe->xAdd($stream, '*', ['message' => json_encode(['body' => $encoded['body'], 'headers' => $encoded['headers'] ?? []])]);
    }
    $pipe->exec();
}
printf("published %d messages to %s in %.2f s\n", $count, $stream, microtime(true) - $started);
