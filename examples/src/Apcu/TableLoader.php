<?php
namespace Example\Apcu;

use Lrpm\Worker;

/**
 * Builds a lookup table (prices by SKU) every `every` seconds and publishes
 * it in APCu under `table`, for every worker of the farm to read: one
 * apcu_store() replaces the whole entry, so readers see the old table or the
 * new one, never a mix.
 */
final class TableLoader implements Worker
{
    private float $every = 5.0;
    private int $rows = 1000;

    public function start(array $job): void
    {
        $this->every = (float) ($job['workerConfig']['every'] ?? 5);
        $this->rows = (int) ($job['workerConfig']['rows'] ?? 1000);
        if (!apcu_enabled()) {
            throw new \RuntimeException('APCu is off: run lrpm-host with -d apc.enable_cli=1');
        }
    }

    public function cycle(): void
    {
        $version = apcu_inc('table_version') ?: (apcu_store('table_version', 1) ? 1 : 0);
        $prices = [];
        for ($i = 0; $i < $this->rows; $i++) {
            $prices["sku-{$i}"] = round(($i * 7919 + $version) % 10000 / 100, 2);
        }
        $table = ['version' => $version, 'loadedBy' => getmypid(), 'prices' => $prices];
        $table['checksum'] = Checksum::of($table['prices']);
        apcu_store('table', $table);
        echo "loaded table v{$version} ({$this->rows} rows) into APCu\n";
        usleep((int) ($this->every * 1e6));
    }
}
