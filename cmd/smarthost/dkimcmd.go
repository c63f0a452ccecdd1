package main

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/relay/daemon"
)

const (
	keygenUsage = "--domain D --selector S [--algo rsa2048|rsa4096|ed25519] [--out DIR] [--if-missing]"
	dnsUsage    = "[--config FILE]"
	checkUsage  = "[--config FILE] [--resolver HOST[:PORT]]"
)

var dkimVerbs = map[string]verb{
	"keygen": {keygenUsage, "write a private key (PKCS#8 PEM, mode 0600, never overwriting) and print its DNS TXT record", dkimKeygen},
	"dns":    {dnsUsage, "print the DNS TXT record of every configured key", dkimDNS},
	"check":  {checkUsage, "look up every configured key's published record and check that it verifies the key's signatures", dkimCheck},
}

const checkHelp = checkUsage + `

For each configured key, looks up its TXT record (selector._domainkey.domain),
checks that it matches the private key (k=, p=, and the h=, s= and t= tags),
then signs a test message with the key and verifies it against that record,
as a receiver would. One line per key says:
  ok          receivers can verify the key's signatures
  missing     no TXT record is published at the name
  mismatched  a record, but one that does not verify this key's signatures
  revoked     the record's p= is empty: the key was withdrawn
  unanswered  DNS gave no answer (timeout, SERVFAIL): try again
  broken      the key's own signatures do not verify: replace the key
Exit 0 when every key is ok, 1 when one is not, 2 for a bad configuration.`

// resolverFlag is --resolver, which dkim check and check-config take.
func resolverFlag(fs flags) *string {
	return fs.String("resolver", "", "DNS server to ask, HOST or HOST:PORT (default: the system's resolver)")
}

func dkimCheck(c cmdIO, args []string) int {
	fs := c.flags("dkim check", checkHelp)
	path := fs.String("config", "", "configuration file")
	resolver := resolverFlag(fs)
	if _, code, done := fs.parse(args); done {
		return code
	}
	f, source, code := fs.config(*path)
	if f == nil {
		return code
	}
	code = printFindings(c.stdout, c.stderr, daemon.CheckDKIM(context.Background(), f, *resolver))
	if code == exitRuntime {
		dns := "smarthost dkim dns"
		if source != "" {
			dns += " --config " + source
		}
		fmt.Fprintf(c.stdout, "%s prints the records to publish.\n", dns)
	}
	return code
}

func dkimKeygen(c cmdIO, args []string) int {
	fs := c.flags("dkim keygen", keygenUsage)
	stdout, stderr := c.stdout, c.stderr
	domain := fs.String("domain", "", "signing domain")
	selector := fs.String("selector", "", "selector")
	algo := fs.String("algo", "rsa2048", "rsa2048, rsa4096 or ed25519")
	out := fs.String("out", ".", "folder for the key file")
	ifMissing := fs.Bool("if-missing", false, "keep a key file that exists (and print its record) instead of failing")
	if _, code, done := fs.parse(args); done {
		return code
	}
	if *domain == "" || *selector == "" {
		errorf(stderr, "dkim keygen needs --domain and --selector")
		return exitBadConfig
	}
	path := filepath.Join(*out, fmt.Sprintf("%s.%s.key", strings.ToLower(*domain), *selector))
	var k crypto.Signer
	if *ifMissing {
		// Several nodes share one key: the first to start makes it.
		if existing, err := dkim.LoadKey(path); err == nil {
			k = existing
		}
	}
	if k == nil {
		var pemText []byte
		var err error
		if k, pemText, err = dkim.GenerateKey(*algo); err != nil {
			errorf(stderr, "%v", err)
			return exitBadConfig
		}
		if err := dkim.WriteKey(path, pemText); err != nil {
			errorf(stderr, "%v", err)
			return exitRuntime
		}
	}
	name, value, err := dkim.DNSRecord(strings.ToLower(*domain), *selector, k.Public())
	if err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "key: %s\n", path)
	printRecord(stdout, name, value)
	return exitOK
}

func dkimDNS(c cmdIO, args []string) int {
	fs := c.flags("dkim dns", dnsUsage)
	path := fs.String("config", "", "configuration file")
	if _, code, done := fs.parse(args); done {
		return code
	}
	f, _, code := fs.config(*path)
	if f == nil {
		return code
	}
	stdout, stderr := c.stdout, c.stderr
	code = exitOK
	for _, d := range slices.Sorted(maps.Keys(f.DKIM.Domains)) {
		for _, k := range f.DKIM.Domains[d] {
			signer, err := dkim.LoadKey(k.KeyFile)
			if err != nil {
				errorf(stderr, "%s %s: %v", d, k.Selector, err)
				code = exitRuntime
				continue
			}
			name, value, err := dkim.DNSRecord(strings.ToLower(d), k.Selector, signer.Public())
			if err != nil {
				errorf(stderr, "%s %s: %v", d, k.Selector, err)
				code = exitRuntime
				continue
			}
			printRecord(stdout, name, value)
		}
	}
	return code
}

// printRecord prints a zone-file line; TXT strings are split at 255 bytes
// as DNS requires, which RSA keys exceed.
func printRecord(w io.Writer, name, value string) {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, `"`+value[:255]+`"`)
		value = value[255:]
	}
	parts = append(parts, `"`+value+`"`)
	fmt.Fprintf(w, "%s. IN TXT ( %s )\n", name, strings.Join(parts, " "))
}
