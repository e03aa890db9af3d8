<?php
// A stand-in for Composer's autoloader: lrpm-host finds vendor/autoload.php
// above the source file and includes it in every PHP process it forks.
spl_autoload_register(static function (string $class): void {
    $prefix = 'Example\\';
    if (strncmp($class, $prefix, strlen($prefix)) === 0) {
        $file = __DIR__ . '/../src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
