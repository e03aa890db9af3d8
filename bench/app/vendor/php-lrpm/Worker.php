<?php
namespace PHPLRPM;

interface Worker
{
    public function start(array $job): void;

    public function cycle(): void;
}
