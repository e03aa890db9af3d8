<?php
// Regenerates the "errors" and "unknown" of job-cases.json from the inputs
// with Lrpm\JobValidator (the Rust unit test then checks the host agrees):
//   php php/tests/gen-cases.php < inputs.json > php/tests/job-cases.json
require __DIR__ . '/../src/JobValidator.php';

$cases = json_decode(stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR);
foreach ($cases as &$case) {
    $validator = new Lrpm\JobValidator(fn (string $class): bool => $case['classExists'] ?? true);
    $case['errors'] = $validator->errors($case['id'], $case['job']);
    $case['unknown'] = $case['errors'] === [] && is_array($case['job']) ? $validator->unknownFields($case['id'], $case['job']) : [];
}
echo json_encode($cases, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION), "\n";
