<?php
// A farm-wide cache for free: lrpm-host starts PHP once, in the supervisor,
// so APCu's shared segment is created before any worker is forked and is
// one cache for all of them. Run it with APCu on for the CLI SAPI:
//
//   lrpm-host -d apc.enable_cli=1 examples/apcu/farm.php
//
// `loader` publishes a lookup table every 5 s; the 4 `callers` share one
// rate limiter ($APCU_PER_SECOND calls a second, default 20, for all of them
// together) and read the table; `churn` ($APCU_CHURN_REPLICAS, default 1)
// overwrites big entries non-stop: recycle or stop it (`lrpmctl recycle
// churn`) and the others do not notice. Never kill -9 an APCu writer: one
// killed inside apcu_store() leaves APCu's lock held and blocks every
// worker (see the README's APCu caveats).

use Example\Apcu\CacheChurn;
use Example\Apcu\RateLimitedCaller;
use Example\Apcu\TableLoader;

return new class implements Lrpm\ConfigurationSource {
    public function loadConfiguration(): array
    {
        $env = static fn (string $name, string $default): string => (getenv($name) ?: $default);
        return [
            'loader' => ['name' => 'loader', 'workerClass' => TableLoader::class, 'mtime' => 1,
                'workerConfig' => ['every' => (float) $env('APCU_TABLE_EVERY', '5'), 'rows' => 1000]],
            'callers' => ['name' => 'callers', 'workerClass' => RateLimitedCaller::class, 'mtime' => 1, 'replicas' => 4,
                'workerConfig' => ['perSecond' => (int) $env('APCU_PER_SECOND', '20')]],
            'churn' => ['name' => 'churn', 'workerClass' => CacheChurn::class, 'mtime' => 1,
                'replicas' => (int) $env('APCU_CHURN_REPLICAS', '1'), 'shortRunTimeSeconds' => 0, 'workerConfig' => []],
        ];
    }
};
