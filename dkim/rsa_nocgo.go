//go:build openssl && !cgo

package dkim

// -tags openssl without cgo would quietly give the pure-Go build; fail
// instead, with the reason in the compiler's message.
var _ int = "the openssl build needs cgo: CGO_ENABLED=1, gcc and libssl-dev"
