<?php
namespace App\Messenger;

use Lrpm\Stoppable;
use Lrpm\Worker as LrpmWorker;
use Symfony\Component\EventDispatcher\EventDispatcher;
use Symfony\Component\Messenger\Event\WorkerRunningEvent;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Transport\TransportInterface;
use Symfony\Component\Messenger\Worker;

/**
 * A Symfony Messenger consumer as an lrpm-host worker: each replica is one
 * Redis consumer named after its slot (`consumer-0` ... `consumer-3`), so a
 * replacement in the same slot takes over its predecessor's pending
 * messages. Every cycle() runs Symfony's own Worker for one batch (at most
 * `batch` messages or `batchSeconds`, or until the stream is empty), with
 * the listeners FrameworkBundle wires for messenger:consume: SIGTERM stops
 * the Worker after the message it is handling (handled and acked), and
 * lrpm-host's recycle limits are checked between batches.
 */
final class Consumer implements LrpmWorker, Stoppable
{
    private TransportInterface $transport;
    private MessageBus $bus;
    private EventDispatcher $dispatcher;
    private int $batch = 100;
    private float $batchSeconds = 1.0;
    private ?Worker $worker = null;
    /** Messages left in the current batch, and when it ends. */
    private int $left = 0;
    private float $until = 0.0;

    public function start(array $job): void
    {
        $config = $job['workerConfig'];
        $consumer = 'consumer-' . \Lrpm\slot();
        $this->transport = Messenger::transport($config['dsn'], $consumer);
        $handler = new TaskHandler(Messenger::redis($config['dsn']), $consumer, (int) ($config['leakBytes'] ?? 0));
        $this->bus = Messenger::bus($handler);
        $this->batch = (int) ($config['batch'] ?? 100);
        $this->batchSeconds = (float) ($config['batchSeconds'] ?? 1.0);
        $this->dispatcher = Messenger::dispatcher();
        // Ends a batch: after `batch` messages or `batchSeconds`, when the
        // stream is empty, or once lrpm-host was asked to stop.
        $this->dispatcher->addListener(WorkerRunningEvent::class, function (WorkerRunningEvent $event): void {
            if ($event->isWorkerIdle() || --$this->left <= 0 || microtime(true) >= $this->until || \Lrpm\should_stop()) {
                $event->getWorker()->stop();
            }
        });
    }

    public function cycle(): void
    {
        $this->left = $this->batch;
        $this->until = microtime(true) + $this->batchSeconds;
        // A Worker stopped once stays stopped: one per batch (it is cheap).
        $this->worker = new Worker([Messenger::TRANSPORT => $this->transport], $this->bus, $this->dispatcher);
        $this->worker->run(['sleep' => 100_000]);
        $this->worker = null;
    }

    public function stop(): void
    {
        // Nothing is half-done between batches: every message received was
        // handled and acked by Worker::run() before it returned.
    }
}
