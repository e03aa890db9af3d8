<?php
// php bin/loop.php CLASS CYCLES: the baseline for loop overhead, a plain
// `while` loop over cycle() in php-cli with nothing else in it.
require __DIR__ . '/../vendor/autoload.php';

[, $class, $cycles] = $argv;
$worker = new $class();
$worker->start(['workerConfig' => []]);
$left = (int) $cycles;
while ($left-- > 0) {
    $worker->cycle();
}
