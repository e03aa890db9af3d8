<?php
namespace Lrpm;

interface Worker
{
    public function start(array $job): void;

    public function cycle(): void;
}
