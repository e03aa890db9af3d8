<?php
namespace Example;

use Lrpm\Worker;

/**
 * A queue consumer without a queue server: takes *.job files from a spool
 * folder, "processes" them and moves them to done/. Drop a file into
 * examples/var/spool while the farm runs and watch it being consumed.
 */
final class SpoolConsumer implements Worker
{
    private string $spool;
    private string $done;

    public function start(array $job): void
    {
        $base = dirname(__DIR__);
        $this->spool = $base . '/' . $job['workerConfig']['spool'];
        $this->done = $base . '/' . $job['workerConfig']['done'];
        foreach ([$this->spool, $this->done] as $dir) {
            is_dir($dir) || mkdir($dir, 0777, true);
        }
        file_put_contents($this->spool . '/hello.job', 'hello from the example farm');
    }

    public function cycle(): void
    {
        $files = glob($this->spool . '/*.job') ?: [];
        foreach ($files as $file) {
            $payload = (string) file_get_contents($file);
            rename($file, $this->done . '/' . basename($file));
            fwrite(STDOUT, "[spool] consumed " . basename($file) . ": " . strtoupper($payload) . PHP_EOL);
        }
        if ($files === []) {
            usleep(500_000);
        }
    }
}
