package configs

import _ "embed"

// Quickstart is configs/quickstart.yaml, so that `smarthost serve` without
// --config runs the development defaults.
//
//go:embed quickstart.yaml
var Quickstart []byte

// QuickstartUsers is configs/users.quickstart.yaml, the quickstart's users
// file, embedded with it so that the quickstart runs from any folder.
//
//go:embed users.quickstart.yaml
var QuickstartUsers []byte

// LoadQuickstart parses the embedded quickstart with its embedded users
// file. Its state (queue, DKIM key, certificate, outbox) goes under ./var
// of the working folder.
func LoadQuickstart() (*File, error) {
	f, err := Parse(Quickstart)
	if err != nil {
		return nil, err
	}
	f.Auth.Static.UsersText = QuickstartUsers
	return f, nil
}
