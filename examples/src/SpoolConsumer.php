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
        // Relative paths are relative to examples/.
        $path = static fn (string $p): string => $p[0] === '/' ? $p : dirname(__DIR__) . '/' . $p;
        $this->spool = $path($job['workerConfig']['spool']);
        $this->done = $path($job['workerConfig']['done']);
        foreach ([$this->spool, $this->done] as $dir) {
            is_dir($dir) || @mkdir($dir, 0777, true) || is_dir($dir) || throw new \RuntimeException("cannot create {$dir}");
        }
        $slot = \function_exists('Lrpm\\slot') ? (int) \Lrpm\slot() : 0;
        file_put_contents($this->spool . "/hello-{$slot}.job", 'hello from the example farm');
    }

    public function cycle(): void
    {
        $files = glob($this->spool . '/*.job') ?: [];
        foreach ($files as $file) {
            $payload = (string) @file_get_contents($file);
            // With replicas, another slot may take the file first: rename() decides.
            if (!@rename($file, $this->done . '/' . basename($file))) {
                continue;
            }
            fwrite(STDOUT, "consumed " . basename($file) . ": " . strtoupper($payload) . PHP_EOL);
        }
        if ($files === []) {
            usleep(500_000);
        }
    }
}
