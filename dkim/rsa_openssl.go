//go:build openssl && cgo

package dkim

// Built with -tags openssl (and cgo), RSA signatures are made by
// libcrypto, which is about four times faster than Go's constant-time RSA
// on x86-64 with AVX-512 (docs/benchmarks.md). The release build
// (scripts/build.sh) is this one, with libcrypto linked in statically;
// docs/security.md says what C code in the signing path costs.

/*
#cgo LDFLAGS: -lcrypto
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

static EVP_PKEY *smarthost_load(const unsigned char *der, long len) {
	return d2i_AutoPrivateKey(NULL, &der, len);
}

// A context per signature: an EVP_PKEY may be shared by threads, a
// context may not.
static int smarthost_sign(EVP_PKEY *k, const unsigned char *digest, size_t dlen, unsigned char *sig, size_t *slen) {
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
	if (ctx == NULL)
		return 0;
	int ok = EVP_PKEY_sign_init(ctx) > 0 &&
		EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0 &&
		EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) > 0 &&
		EVP_PKEY_sign(ctx, sig, slen, digest, dlen) > 0;
	EVP_PKEY_CTX_free(ctx);
	return ok;
}

static const char *smarthost_openssl_version(void) {
	return OpenSSL_version(OPENSSL_VERSION);
}
*/
import "C"

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"runtime"
	"unsafe"
)

// RSABackend names what makes RSA signatures in this build.
var RSABackend = C.GoString(C.smarthost_openssl_version())

// opensslRSA signs with libcrypto and keeps the Go key for what libcrypto
// is not asked to do (PSS, hashes other than SHA-256: DKIM uses neither).
type opensslRSA struct {
	key  *rsa.PrivateKey
	pkey *C.EVP_PKEY
}

func rsaSigner(k *rsa.PrivateKey) (crypto.Signer, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	p := C.smarthost_load((*C.uchar)(unsafe.Pointer(&der[0])), C.long(len(der)))
	clear(der)
	if p == nil {
		return nil, errors.New("libcrypto cannot load the RSA key")
	}
	s := &opensslRSA{key: k, pkey: p}
	// Keys are replaced on reload; the old ones go with their last user.
	runtime.AddCleanup(s, func(p *C.EVP_PKEY) { C.EVP_PKEY_free(p) }, p)
	return s, nil
}

func (s *opensslRSA) Public() crypto.PublicKey { return &s.key.PublicKey }

func (s *opensslRSA) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, pss := opts.(*rsa.PSSOptions); pss || opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != crypto.SHA256.Size() {
		return s.key.Sign(rand, digest, opts)
	}
	sig := make([]byte, s.key.Size())
	n := C.size_t(len(sig))
	ok := C.smarthost_sign(s.pkey, (*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), &n)
	runtime.KeepAlive(s)
	if ok == 0 {
		return nil, errors.New("libcrypto could not sign")
	}
	sig = sig[:n]
	// A signature computed wrongly (a fault in the CRT step) can give away
	// the key: check it before it leaves, as Go's own RSA does.
	if err := rsa.VerifyPKCS1v15(&s.key.PublicKey, crypto.SHA256, digest, sig); err != nil {
		return nil, fmt.Errorf("libcrypto made a bad signature: %w", err)
	}
	return sig, nil
}
