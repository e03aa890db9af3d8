<?php
namespace Lrpm\Tests;

use Lrpm\Testing\WorkerHarness;
use PHPUnit\Framework\TestCase;

final class WorkerHarnessTest extends TestCase
{
    public function testStartCyclesAndTheStopHookAsTheHostRunsThem(): void
    {
        $worker = new RecordingWorker();
        $harness = new WorkerHarness($worker, ['workerConfig' => ['queue' => 'orders']], id: 42, slot: 3);
        $harness->start()->cycles(2)->stop();
        self::assertSame(['start', '42', 3, 'worker'], $worker->seen[0]);
        self::assertSame([['cycle', false], ['cycle', false]], array_slice($worker->seen, 1));
        self::assertSame(2, $harness->cycleCount());
        self::assertSame(1, $worker->stops);
        // The job as start() gets it: php-lrpm's defaults, arrays from JSON.
        self::assertSame(['queue' => 'orders'], $worker->job['workerConfig']);
        self::assertSame(5, $worker->job['shortRunTimeSeconds']);
        self::assertSame(RecordingWorker::class, $worker->job['workerClass']);
        // Outside a running worker the functions answer as in the configuration process.
        self::assertNull(\Lrpm\slot());
        self::assertSame('config', \Lrpm\process_kind());
    }

    public function testAStopRequestIsSeenByShouldStopAndEndsTheLoop(): void
    {
        $worker = new RecordingWorker();
        $harness = (new WorkerHarness($worker))->start()->cycle()->requestStop();
        $harness->cycle();
        self::assertSame(['cycle', true], end($worker->seen));
        $harness->cycles(5);
        self::assertSame(2, $harness->cycleCount());
    }

    public function testRecycleEndsTheLoop(): void
    {
        $worker = new RecordingWorker();
        $harness = (new WorkerHarness($worker, ['workerConfig' => ['recycleAfter' => 3]]))->start()->cycles(10);
        self::assertTrue($harness->recycleRequested());
        self::assertSame(2, $harness->cycleCount());
    }

    public function testProgressNotesAreRecorded(): void
    {
        $harness = (new WorkerHarness(new RecordingWorker()))->start()->cycles(2);
        self::assertSame(['cycle 2', 'cycle 3'], $harness->progressNotes());
    }

    public function testPhpLrpmWorkersAndInvalidJobs(): void
    {
        $worker = new PhpLrpmWorker();
        (new WorkerHarness($worker))->cycles(3)->stop();
        self::assertSame(3, $worker->cycles);
        $this->expectException(\InvalidArgumentException::class);
        $this->expectExceptionMessage("job test: field 'replicas': Invalid data: 0 is below 1");
        new WorkerHarness(new RecordingWorker(), ['replicas' => 0]);
    }
}
