package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/relay/daemon"
)

const (
	keygenUsage = "--domain D --selector S [--algo rsa2048|rsa4096|ed25519] [--out DIR] [--if-missing]"
	dnsUsage    = "[--config FILE]"
	checkUsage  = "[--config FILE] [--resolver HOST[:PORT]]"
)

var dkimVerbs = map[string]cmdline.Verb{
	"keygen": {Usage: keygenUsage, About: "write a private key (PKCS#8 PEM, mode 0600, never overwriting) and print its DNS TXT record", Run: dkimKeygen},
	"dns":    {Usage: dnsUsage, About: "print the DNS TXT record of every configured key", Run: dkimDNS},
	"check":  {Usage: checkUsage, About: "look up every configured key's published record and check that it verifies the key's signatures", Run: dkimCheck},
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

func dkimCheck(c cmdline.IO, args []string) int {
	fs := c.Flags("dkim check", checkHelp)
	path := fs.String("config", "", "configuration file")
	resolver := resolverFlag(fs)
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	f, source, code := fs.Config(*path)
	if f == nil {
		return code
	}
	code = printFindings(c.Stdout, c.Stderr, daemon.CheckDKIM(context.Background(), f, *resolver))
	if code == cmdline.Runtime {
		dns := "smarthost dkim dns"
		if source != "" {
			dns += " --config " + source
		}
		fmt.Fprintf(c.Stdout, "%s prints the records to publish.\n", dns)
	}
	return code
}

func dkimKeygen(c cmdline.IO, args []string) int {
	fs := c.Flags("dkim keygen", keygenUsage)
	stdout, stderr := c.Stdout, c.Stderr
	domain := fs.String("domain", "", "signing domain")
	selector := fs.String("selector", "", "selector")
	algo := fs.String("algo", "rsa2048", "rsa2048, rsa4096 or ed25519")
	out := fs.String("out", ".", "folder for the key file")
	ifMissing := fs.Bool("if-missing", false, "keep a key file that exists (and print its record) instead of failing")
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	if *domain == "" || *selector == "" {
		cmdline.Errorf(stderr, "dkim keygen needs --domain and --selector")
		return cmdline.BadConfig
	}
	path, record, err := dkim.Keygen(*out, *domain, *selector, *algo, *ifMissing)
	if err != nil {
		cmdline.Errorf(stderr, "%v", err)
		if errors.Is(err, dkim.ErrUnknownAlgorithm) {
			return cmdline.BadConfig
		}
		return cmdline.Runtime
	}
	fmt.Fprintf(stdout, "key: %s\n%s\n", path, record)
	return cmdline.OK
}

func dkimDNS(c cmdline.IO, args []string) int {
	fs := c.Flags("dkim dns", dnsUsage)
	path := fs.String("config", "", "configuration file")
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	f, _, code := fs.Config(*path)
	if f == nil {
		return code
	}
	code = cmdline.OK
	for _, r := range daemon.DKIMRecords(f) {
		if r.Failed {
			cmdline.Errorf(c.Stderr, "%s", r)
			code = cmdline.Runtime
			continue
		}
		fmt.Fprintln(c.Stdout, r.Outcome)
	}
	return code
}
