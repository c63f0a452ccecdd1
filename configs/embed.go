package configs

import _ "embed"

// Quickstart is configs/quickstart.yaml, so that `smarthost serve` without
// --config runs the development defaults.
//
//go:embed quickstart.yaml
var Quickstart []byte
