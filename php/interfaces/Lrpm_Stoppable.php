<?php
namespace Lrpm;

interface Stoppable
{
    public function stop(): void;
}
