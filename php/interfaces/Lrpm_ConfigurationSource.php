<?php
namespace Lrpm;

interface ConfigurationSource
{
    public function loadConfiguration(): array;
}
