<?php
// The example farm's configuration source. lrpm-host polls it (every 30 s by
// default, -i N to change, SIGHUP or `lrpmctl reload` to poll now) and starts,
// restarts and stops workers to match. Edit jobs.json while the farm runs:
// a job whose mtime grows is restarted with its new configuration.

use Example\JsonFileSource;

return new JsonFileSource(__DIR__ . '/jobs.json');
