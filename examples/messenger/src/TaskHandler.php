<?php
namespace App\Messenger;

/**
 * Handles a Task and records that it did, in Redis:
 *
 * - `inflight:ID` while the handler runs (a stop must never leave one);
 * - `handled:ID` with SETNX, set by the first handling only: a second
 *   handling of the same message (a redelivery after a SIGKILL between the
 *   handler and the ack) finds it set, counts `duplicates` and pushes the id
 *   to `duplicate_ids`; otherwise `handled` is incremented. One Lua script,
 *   so a SIGKILL cannot separate the SETNX from its counter.
 */
final class TaskHandler
{
    private const RECORD = <<<'LUA'
        if redis.call('SETNX', KEYS[1], ARGV[1]) == 1 then
            return redis.call('INCR', 'handled')
        end
        redis.call('RPUSH', 'duplicate_ids', ARGV[2])
        return -redis.call('INCR', 'duplicates')
        LUA;

    /** @var list<string> what `leakBytes` keeps (to show memoryLimitMb recycling) */
    private array $leak = [];

    public function __construct(private \Redis $redis, private string $consumer, private int $leakBytes = 0)
    {
    }

    public function __invoke(Task $task): void
    {
        $this->redis->set("inflight:{$task->id}", $this->consumer);
        $this->redis->eval(self::RECORD, ["handled:{$task->id}", $this->consumer, (string) $task->id], 1);
        if ($this->leakBytes > 0) {
            $this->leak[] = str_repeat('x', $this->leakBytes);
        }
        $this->redis->del("inflight:{$task->id}");
    }
}
