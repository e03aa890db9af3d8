<?php
namespace Lrpm\Tests;

use Lrpm\JobValidator;
use PHPUnit\Framework\TestCase;

/** The shared cases (job-cases.json), which src/job/tests.rs also reads. */
final class JobValidatorTest extends TestCase
{
    public function cases(): iterable
    {
        $cases = json_decode((string) file_get_contents(__DIR__ . '/job-cases.json'), true, 512, JSON_THROW_ON_ERROR);
        foreach ($cases as $case) {
            yield $case['case'] => [$case];
        }
    }

    /** @dataProvider cases */
    public function testTheHostsRulesAndMessages(array $case): void
    {
        $validator = new JobValidator(fn (string $class): bool => $case['classExists'] ?? true);
        self::assertSame($case['errors'], $validator->errors($case['id'], $case['job']));
        self::assertSame($case['errors'] === [], $validator->isValid($case['id'], $case['job']));
        if ($case['errors'] === []) {
            self::assertSame($case['unknown'], $validator->unknownFields($case['id'], $case['job']));
        }
    }

    public function testClassesAreLookedUpWithTheAutoloaderByDefault(): void
    {
        $validator = new JobValidator();
        $job = ['name' => 'x', 'workerClass' => RecordingWorker::class, 'mtime' => 1, 'workerConfig' => []];
        self::assertSame([], $validator->errors(1, $job));
        self::assertSame(
            ["job 1: field 'workerClass': Invalid data: class App\\Missing does not exist (Worker class, must be a string referencing an existing class)"],
            $validator->errors(1, ['workerClass' => 'App\\Missing'] + $job)
        );
    }

    public function testAWholeConfigurationAndTheDefaults(): void
    {
        $validator = new JobValidator(fn () => true);
        $good = ['name' => 'x', 'workerClass' => 'A', 'mtime' => 1, 'workerConfig' => []];
        self::assertSame([], $validator->configurationErrors(['a' => $good, 7 => $good]));
        self::assertSame(
            ["job b: field '*': the job must be an array, got NULL (each job is an array of fields)"],
            $validator->configurationErrors(['a' => $good, 'b' => null])
        );
        self::assertSame(['the configuration must be an array of jobs, got string'], $validator->configurationErrors('x'));
        $job = $validator->withDefaults($good);
        self::assertSame([5, 10], [$job['shortRunTimeSeconds'], $job['shutdownTimeoutSeconds']]);
    }
}
