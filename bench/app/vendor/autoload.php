<?php
// The benchmark app's autoloader, standing in for Composer's: the Symfony
// components come from Debian's php-symfony-* packages (each ships a class-map
// autoloader), the app's own classes from src/, and php-lrpm's two interfaces
// from vendor/php-lrpm, as an app that depends on php-lrpm has them (the
// harness copies them there from php/interfaces when it stages the app).
foreach (['Messenger', 'Console', 'DependencyInjection', 'Serializer', 'EventDispatcher', 'Config',
          'PropertyAccess', 'PropertyInfo', 'Validator'] as $component) {
    require_once "/usr/share/php/Symfony/Component/{$component}/autoload.php";
}

spl_autoload_register(static function (string $class): void {
    if (strncmp($class, 'Bench\\', 6) === 0) {
        $file = __DIR__ . '/../src/' . str_replace('\\', '/', substr($class, 6)) . '.php';
        if (is_file($file)) {
            require $file;
        }
    } elseif ($class === 'PHPLRPM\\Worker' || $class === 'PHPLRPM\\ConfigurationSource') {
        require __DIR__ . '/php-lrpm/PHPLRPM_' . substr($class, 8) . '.php';
    }
});

// With lrpm-host (its zygote, the default), the bootstrap runs once in the zygote: build the
// framework there, and every worker forked from it shares it (the
// contender lrpm-host; php-cli contenders never have this function).
// BENCH_NO_WARMUP=1 (the contender lrpm-host-cold) leaves it to
// each worker's start(), to measure the zygote without a warm-up.
if (function_exists('Lrpm\\process_kind') && \Lrpm\process_kind() === 'zygote' && getenv('BENCH_NO_WARMUP') !== '1') {
    \Bench\SymfonyWorker::warmUp();
}
