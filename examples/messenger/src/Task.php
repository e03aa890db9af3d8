<?php
namespace App\Messenger;

/** The message: a task with a unique id (what the handler records). */
final class Task
{
    public function __construct(public int $id, public string $payload = '')
    {
    }
}
