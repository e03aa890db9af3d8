<?php
// php bin/stats.php [COUNT]: what the consumers recorded in Redis: messages
// handled, duplicates (handled twice), in-flight markers left behind,
// messages pending (received, not acked) and left in the stream; with
// COUNT, also the ids in 0..COUNT-1 never handled. One JSON line.
require __DIR__ . '/../vendor/autoload.php';

use App\Messenger\Messenger;

$dsn = getenv('MESSENGER_DSN') ?: 'redis://127.0.0.1:6379/messages';
$redis = Messenger::redis($dsn);
$stream = Messenger::stream($dsn);
$pending = $redis->xPending($stream, 'workers');
$stats = [
    'handled' => (int) $redis->get('handled'),
    'duplicates' => (int) $redis->get('duplicates'),
    'inflight' => count($redis->keys('inflight:*')),
    'pending' => (int) ($pending[0] ?? 0),
    'stream' => (int) $redis->xLen($stream),
];
if (isset($argv[1])) {
    $missing = 0;
    for ($id = 0; $id < (int) $argv[1]; $id += 1000) {
        $keys = array_map(fn ($i) => "handled:{$i}", range($id, min($id + 1000, (int) $argv[1]) - 1));
        $missing += count(array_filter($redis->mget($keys), fn ($v) => $v === false));
    }
    $stats['missing'] = $missing;
}
echo json_encode($stats), "\n";
