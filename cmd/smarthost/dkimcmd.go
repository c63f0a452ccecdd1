package main

import (
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"

	"github.com/smarthost/smarthost/dkim"
)

func dkimCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		errorf(stderr, "dkim needs keygen or dns")
		return exitBadConfig
	}
	switch args[0] {
	case "keygen":
		return dkimKeygen(args[1:], stdout, stderr)
	case "dns":
		return dkimDNS(args[1:], stdout, stderr)
	}
	errorf(stderr, "dkim: unknown command %q (keygen or dns)", args[0])
	return exitBadConfig
}

func dkimKeygen(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("dkim keygen", stderr)
	domain := fs.String("domain", "", "signing domain")
	selector := fs.String("selector", "", "selector")
	algo := fs.String("algo", "rsa2048", "rsa2048, rsa4096 or ed25519")
	out := fs.String("out", ".", "folder for the key file")
	if _, err := parseFlags(fs, args); err != nil {
		return exitBadConfig
	}
	if *domain == "" || *selector == "" {
		errorf(stderr, "dkim keygen needs --domain and --selector")
		return exitBadConfig
	}
	k, pemText, err := dkim.GenerateKey(*algo)
	if err != nil {
		errorf(stderr, "%v", err)
		return exitBadConfig
	}
	path := filepath.Join(*out, fmt.Sprintf("%s.%s.key", strings.ToLower(*domain), *selector))
	if err := dkim.WriteKey(path, pemText); err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
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

func dkimDNS(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("dkim dns", stderr)
	path := fs.String("config", "", "configuration file")
	if _, err := parseFlags(fs, args); err != nil {
		return exitBadConfig
	}
	if *path == "" {
		errorf(stderr, "dkim dns needs --config FILE")
		return exitBadConfig
	}
	f, err := loadConfig(*path)
	if err != nil {
		printProblems(stderr, *path, err)
		return exitBadConfig
	}
	domains := make([]string, 0, len(f.DKIM.Domains))
	for d := range f.DKIM.Domains {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	code := exitOK
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
