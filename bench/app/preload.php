<?php
// opcache.preload script for `lrpm-host --preload`: runs the workload's
// framework wiring once so every class it touches is preloaded.
require __DIR__ . '/vendor/autoload.php';

Bench\SymfonyWorker::loadFramework();
