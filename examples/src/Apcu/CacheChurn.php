<?php
namespace Example\Apcu;

use Lrpm\Worker;

/**
 * Writes 256 KB blobs with their checksum into APCu as fast as it can
 * (16 keys, overwritten again and again): stop or recycle it at any moment
 * and the other workers still read whole, valid entries (RateLimitedCaller
 * checks). Not kill -9: a writer killed inside apcu_store() leaves APCu's
 * lock held, and the other workers block on it.
 */
final class CacheChurn implements Worker
{
    private int $writes = 0;

    public function start(array $job): void
    {
    }

    public function cycle(): void
    {
        $data = random_bytes(256 * 1024);
        apcu_store('blob:' . random_int(0, 15), ['data' => $data, 'checksum' => hash('xxh64', $data), 'pid' => getmypid()]);
        if (++$this->writes % 2000 === 0) {
            echo "{$this->writes} blobs written\n";
        }
    }
}
