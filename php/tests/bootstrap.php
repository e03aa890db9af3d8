<?php
// The package's autoloading as composer.json declares it (PSR-4 Lrpm\ =>
// src/, a class map of interfaces/, testing/functions.php), without needing
// `composer install` first: tests/php_package.rs checks the Composer install
// separately.
spl_autoload_register(static function (string $class): void {
    $root = dirname(__DIR__);
    if (str_starts_with($class, 'Lrpm\\')) {
        $file = $root . '/src/' . str_replace('\\', '/', substr($class, 5)) . '.php';
        if (is_file($file)) {
            require $file;
            return;
        }
    }
    $interface = $root . '/interfaces/' . str_replace('\\', '_', $class) . '.php';
    if (is_file($interface)) {
        require $interface;
    }
});
require dirname(__DIR__) . '/testing/functions.php';
require __DIR__ . '/Fixtures.php';
