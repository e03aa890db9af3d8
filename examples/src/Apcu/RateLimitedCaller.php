<?php
namespace Example\Apcu;

use Lrpm\Worker;

/**
 * Calls a (pretend) rate-limited API: every replica takes a token from one
 * farm-wide limiter in APCu (at most `perSecond` calls a second for all of
 * them together, a fixed window with apcu_add + apcu_inc), and for each call
 * looks a price up in the table TableLoader publishes. Once a second it
 * prints its calls of the second before: `second S: N calls ...`. It also
 * checks what it reads: a table or a churn blob whose checksum does not
 * match is reported as CORRUPT.
 */
final class RateLimitedCaller implements Worker
{
    private int $perSecond = 20;
    private int $second = 0;
    private int $calls = 0;
    private string $lastRead = 'no table yet';

    public function start(array $job): void
    {
        $this->perSecond = (int) ($job['workerConfig']['perSecond'] ?? 20);
        $this->second = time();
    }

    public function cycle(): void
    {
        $now = time();
        if ($now !== $this->second) {
            echo "second {$this->second}: {$this->calls} calls, {$this->lastRead}\n";
            [$this->second, $this->calls] = [$now, 0];
        }
        $window = "rate:{$now}";
        apcu_add($window, 0, 10);
        if (apcu_inc($window) > $this->perSecond) {
            // The farm used its calls for this second: wait for the next one.
            usleep((int) ((1.0 - fmod(microtime(true), 1.0)) * 1e6) + 1000);
            return;
        }
        $this->calls++;
        $table = apcu_fetch('table');
        if (is_array($table)) {
            if (Checksum::of($table['prices']) !== $table['checksum']) {
                echo "CORRUPT table v{$table['version']}\n";
            }
            $sku = 'sku-' . random_int(0, count($table['prices']) - 1);
            $this->lastRead = sprintf('%s = %.2f from table v%d (loaded by pid %d, read by pid %d)',
                $sku, $table['prices'][$sku], $table['version'], $table['loadedBy'], getmypid());
        }
        $blob = apcu_fetch('blob:' . random_int(0, 15));
        if (is_array($blob) && hash('xxh64', $blob['data']) !== $blob['checksum']) {
            echo "CORRUPT blob written by pid {$blob['pid']}\n";
        }
        usleep(1000); // the call itself
    }
}
