<?php
// The Messenger example's autoloader, standing in for Composer's: Symfony
// Messenger, its Redis transport and the event dispatcher come from Debian's
// php-symfony-messenger, php-symfony-redis-messenger and
// php-symfony-event-dispatcher (each ships a class-map autoloader), the
// app's classes (namespace App\Messenger\) from src/.
require_once '/usr/share/php/Symfony/Component/Messenger/autoload.php';
require_once '/usr/share/php/Symfony/Component/Messenger/Bridge/Redis/autoload.php';
require_once '/usr/share/php/Symfony/Component/EventDispatcher/autoload.php';

spl_autoload_register(static function (string $class): void {
    $prefix = 'App\\Messenger\\';
    if (strncmp($class, $prefix, strlen($prefix)) === 0) {
        $file = __DIR__ . '/../src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
