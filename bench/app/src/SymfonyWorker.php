<?php
namespace Bench;

use PHPLRPM\Worker;
use Symfony\Component\Console\Application;
use Symfony\Component\Console\Command\Command;
use Symfony\Component\Console\Input\ArrayInput;
use Symfony\Component\Console\Output\BufferedOutput;
use Symfony\Component\DependencyInjection\ContainerBuilder;
use Symfony\Component\DependencyInjection\Reference;
use Symfony\Component\EventDispatcher\EventDispatcher;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;
use Symfony\Component\Messenger\Stamp\HandledStamp;
use Symfony\Component\Messenger\Transport\InMemoryTransport;
use Symfony\Component\Messenger\Transport\Serialization\Serializer as MessengerSerializer;
use Symfony\Component\Serializer\Encoder\JsonEncoder;
use Symfony\Component\Serializer\Normalizer\ArrayDenormalizer;
use Symfony\Component\Serializer\Normalizer\ObjectNormalizer;
use Symfony\Component\Serializer\Serializer;
use Symfony\Component\Validator\Validation;

/**
 * The benchmark workload: a queue consumer that wires a real framework in
 * start() (a compiled DI container, a Messenger bus with a serializer and an
 * in-memory transport, a Console application, a validator) and then sleeps
 * in cycle(). On its first cycle it sends "first JOB PID CYCLE_NS START_NS
 * HEAP PEAK" (CLOCK_MONOTONIC at the first cycle and at the entry of start(),
 * then memory_get_usage() and memory_get_peak_usage()) to the
 * harness's Unix datagram socket, which is how the harness times spawns and
 * restarts without polling.
 */
final class SymfonyWorker implements Worker
{
    private string $events = '';
    private string $jobId = '';
    private int $sleepMicroseconds = 100_000;
    /** "useBus": each cycle dispatches a message through the (shared) bus. */
    private bool $useBus = false;
    private bool $reported = false;
    private int $startedAt = 0;
    private ?MessageBus $bus = null;
    /** The framework built once in lrpm-host's zygote (--zygote), shared by the workers forked from it. */
    private static ?MessageBus $warm = null;

    /** The bootstrap's warm-up, in the zygote only (vendor/autoload.php). */
    public static function warmUp(): void
    {
        self::$warm = self::loadFramework();
    }

    public function start(array $job): void
    {
        $this->startedAt = hrtime(true);
        $config = $job['workerConfig'] ?? [];
        $this->events = (string) ($config['events'] ?? '');
        $this->jobId = (string) ($config['id'] ?? '');
        $this->sleepMicroseconds = (int) ($config['sleepMs'] ?? 100) * 1000;
        $this->useBus = (bool) ($config['useBus'] ?? false);
        // "framework": false leaves start() empty, to time the host alone.
        if ($config['framework'] ?? true) {
            $this->bus = self::$warm ?? self::loadFramework();
        }
    }

    public function cycle(): void
    {
        if (!$this->reported) {
            $this->reported = true;
            if ($this->events !== '') {
                $now = hrtime(true);
                $socket = stream_socket_client('udg://' . $this->events, $errno, $error);
                if ($socket === false) {
                    throw new \RuntimeException("cannot reach the harness at {$this->events}: {$error}");
                }
                fwrite($socket, sprintf(
                    'first %s %d %d %d %d %d',
                    $this->jobId,
                    getmypid(),
                    $now,
                    $this->startedAt,
                    memory_get_usage(),
                    memory_get_peak_usage()
                ));
                fclose($socket);
            }
        }
        if ($this->useBus && $this->bus !== null) {
            $this->bus->dispatch(new Ping('cycle'));
        }
        usleep($this->sleepMicroseconds);
    }

    /** Builds the framework objects; the preload script calls it too. */
    public static function loadFramework(): MessageBus
    {
        $container = new ContainerBuilder();
        $container->register('dispatcher', EventDispatcher::class)->setPublic(true);
        $container->register('encoder', JsonEncoder::class);
        $container->register('normalizer', ObjectNormalizer::class);
        $container->register('serializer', Serializer::class)
            ->setArguments([[new Reference('normalizer'), new ArrayDenormalizer()], [new Reference('encoder')]])
            ->setPublic(true);
        $container->register('handler', PingHandler::class)->setPublic(true);
        $container->setParameter('queue', 'bench');
        $container->compile();

        $handler = $container->get('handler');
        $bus = new MessageBus([
            new HandleMessageMiddleware(new HandlersLocator([Ping::class => [$handler]])),
        ]);
        $transport = new InMemoryTransport(new MessengerSerializer($container->get('serializer')));
        $transport->send(new Envelope(new Ping('warm-up')));
        foreach ($transport->get() as $envelope) {
            $handled = $bus->dispatch($envelope->getMessage())->last(HandledStamp::class);
            if ($handled === null || $handled->getResult() !== 'pong warm-up') {
                throw new \RuntimeException('the Messenger warm-up message was not handled');
            }
            $transport->ack($envelope);
        }

        $validator = Validation::createValidator();
        if (count($validator->validate('bench', new \Symfony\Component\Validator\Constraints\NotBlank())) !== 0) {
            throw new \RuntimeException('the validator rejected a valid value');
        }

        $console = new Application('bench', '1.0');
        $console->setAutoExit(false);
        $console->add(new class ('bench:ping') extends Command {
            protected function execute(\Symfony\Component\Console\Input\InputInterface $input, \Symfony\Component\Console\Output\OutputInterface $output): int
            {
                $output->writeln('pong');
                return Command::SUCCESS;
            }
        });
        $output = new BufferedOutput();
        $console->run(new ArrayInput(['command' => 'bench:ping']), $output);
        if (trim($output->fetch()) !== 'pong') {
            throw new \RuntimeException('the console command did not run');
        }
        $console->run(new ArrayInput(['command' => 'list', '--format' => 'xml']), $output);
        if (!str_contains($output->fetch(), 'bench:ping')) {
            throw new \RuntimeException('the console did not list its command');
        }

        $serializer = $container->get('serializer');
        $json = $serializer->serialize([new Ping('a'), new Ping('b')], 'json');
        $pings = $serializer->deserialize($json, Ping::class . '[]', 'json');
        if (count($pings) !== 2 || $pings[1]->payload !== 'b') {
            throw new \RuntimeException('the serializer round trip failed');
        }
        $container->get('dispatcher')->dispatch(new \stdClass(), 'bench.started');
        return $bus;
    }
}
