<?php
namespace App\Messenger;

use Symfony\Component\EventDispatcher\EventDispatcher;
use Symfony\Component\Messenger\Bridge\Redis\Transport\Connection;
use Symfony\Component\Messenger\Bridge\Redis\Transport\RedisTransport;
use Symfony\Component\Messenger\EventListener\DispatchPcntlSignalListener;
use Symfony\Component\Messenger\EventListener\StopWorkerOnSigtermSignalListener;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

/**
 * The app's wiring, shared by the lrpm-host worker (Consumer) and the
 * php-cli consumer (bin/consume.php): what FrameworkBundle would build from
 * `framework.messenger` with one Redis stream transport.
 */
final class Messenger
{
    public const TRANSPORT = 'redis';

    public static function transport(string $dsn, string $consumer): RedisTransport
    {
        $connection = Connection::fromDsn($dsn, [
            'consumer' => $consumer,
            'group' => 'workers',
            'delete_after_ack' => true,
        ]);
        return new RedisTransport($connection, new PhpSerializer());
    }

    public static function bus(TaskHandler $handler): MessageBus
    {
        return new MessageBus([new HandleMessageMiddleware(new HandlersLocator([Task::class => [$handler]]))]);
    }

    /** The dispatcher with the listeners FrameworkBundle registers for messenger:consume. */
    public static function dispatcher(): EventDispatcher
    {
        $dispatcher = new EventDispatcher();
        $dispatcher->addSubscriber(new StopWorkerOnSigtermSignalListener());
        $dispatcher->addSubscriber(new DispatchPcntlSignalListener());
        return $dispatcher;
    }

    /** A phpredis connection from the transport's DSN (for the handler's records). */
    public static function redis(string $dsn): \Redis
    {
        $url = parse_url($dsn);
        $redis = new \Redis();
        $redis->connect($url['host'] ?? '127.0.0.1', $url['port'] ?? 6379, 5.0);
        return $redis;
    }

    /** The stream name in a DSN redis://HOST:PORT/STREAM. */
    public static function stream(string $dsn): string
    {
        return explode('/', trim(parse_url($dsn, PHP_URL_PATH) ?? '', '/'))[0] ?: 'messages';
    }
}
