package main

import (
	"crypto"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"

	"github.com/smarthost/smarthost/dkim"
)

const (
	keygenUsage = "--domain D --selector S [--algo rsa2048|rsa4096|ed25519] [--out DIR] [--if-missing]"
	dnsUsage    = "--config FILE"
)

var dkimVerbs = map[string]verb{
	"keygen": {keygenUsage, "write a private key (PKCS#8 PEM, mode 0600, never overwriting) and print its DNS TXT record", dkimKeygen},
	"dns":    {dnsUsage, "print the DNS TXT record of every configured key", dkimDNS},
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
	f, code := fs.config(*path)
	if f == nil {
		return code
	}
	stdout, stderr := c.stdout, c.stderr
	domains := make([]string, 0, len(f.DKIM.Domains))
	for d := range f.DKIM.Domains {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	code = exitOK
	for _, d := range domains {
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
