<?php
// php bin/consume.php CONSUMER: the same consumer as a plain php-cli
// process, the way `bin/console messenger:consume redis` runs it: one
// Symfony Worker until SIGTERM (StopWorkerOnSigtermSignalListener), with
// the same transport, bus, handler and listeners as the lrpm-host worker.
// make bench runs 4 of these side by side with the lrpm-host farm.
require __DIR__ . '/../vendor/autoload.php';

use App\Messenger\Messenger;
use App\Messenger\TaskHandler;
use Symfony\Component\Messenger\Worker;

$dsn = getenv('MESSENGER_DSN') ?: 'redis://127.0.0.1:6379/messages';
$consumer = $argv[1] ?? 'consumer-0';
$transport = Messenger::transport($dsn, $consumer);
$bus = Messenger::bus(new TaskHandler(Messenger::redis($dsn), $consumer));
$worker = new Worker([Messenger::TRANSPORT => $transport], $bus, Messenger::dispatcher());
$worker->run(['sleep' => 100_000]);
