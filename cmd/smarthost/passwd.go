package main

import (
	"fmt"

	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/policy"
)

func passwdCmd(c cmdline.IO, args []string) int {
	fs := c.Flags("passwd", "[--cost N]\n\nReads a password (twice without echo on a terminal, or one line on standard input)\nand prints its bcrypt hash for the static users file.")
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	pw, err := c.ReadPassword()
	var h string
	if err == nil {
		h, err = policy.HashPassword(pw, *cost)
	}
	if err != nil {
		cmdline.Errorf(c.Stderr, "passwd: %v", err)
		return cmdline.Runtime
	}
	fmt.Fprintln(c.Stdout, h)
	return cmdline.OK
}
