//go:build !(openssl && cgo)

package dkim

import (
	"crypto"
	"crypto/rsa"
)

// RSABackend names what makes RSA signatures in this build.
const RSABackend = "Go crypto/rsa"

// rsaSigner is the key itself: Go's constant-time RSA, in a static binary.
func rsaSigner(k *rsa.PrivateKey) (crypto.Signer, error) { return k, nil }
