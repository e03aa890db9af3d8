<?php
namespace Lrpm\Tests;

use Lrpm\Task;
use Lrpm\TaskError;
use PHPUnit\Framework\TestCase;

/** Outside lrpm-host, Lrpm\Task runs the callable at once, with the host's answers. */
final class TaskInlineTest extends TestCase
{
    public function testAValueComesBackAsFromATask(): void
    {
        $handle = Task::run(static fn (int $a, int $b): int => $a + $b, 40, 2);
        self::assertTrue($handle->done());
        self::assertSame(0, $handle->pid());
        self::assertSame(42, $handle->wait(1.0));
        self::assertSame(['x' => 42], Task::all(['x' => $handle]));
        self::assertSame('x', Task::any(['x' => $handle]));
    }

    public function testAnExceptionComesBackAsATaskError(): void
    {
        $handle = Task::run(static function (): void {
            throw new \DomainException('boom', 7, new \LogicException('the cause'));
        });
        try {
            $handle->wait();
            self::fail('no TaskError');
        } catch (TaskError $e) {
            self::assertSame(['DomainException', 'boom', 7], [$e->getTaskClass(), $e->getMessage(), $e->getCode()]);
            self::assertInstanceOf(TaskError::class, $e->getPrevious());
            self::assertSame('LogicException', $e->getPrevious()->getTaskClass());
            self::assertStringContainsString('{closure', $e->getTaskTrace());
        }
    }

    public function testAPoolCallsOneInstanceInThisProcess(): void
    {
        $pool = \Lrpm\Pool::start(InlineHelper::class, 4, ['base' => 40]);
        self::assertSame(42, $pool->call('add', 2)->wait());
        self::assertSame(43, $pool->callIdempotent('add', 3)->wait());
        $this->expectException(TaskError::class);
        $pool->call('fail')->wait();
    }
}

final class InlineHelper
{
    private int $base = 0;

    public function start(array $config): void
    {
        $this->base = $config['base'];
    }

    public function add(int $n): int
    {
        return $this->base + $n;
    }

    public function fail(): void
    {
        throw new \RuntimeException('no');
    }
}
