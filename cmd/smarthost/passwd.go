package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"

	"github.com/smarthost/smarthost/policy"
)

func passwdCmd(c cmdIO, args []string) int {
	fs := c.flags("passwd", "[--cost N]\n\nReads a password (twice without echo on a terminal, or one line on standard input)\nand prints its bcrypt hash for the static users file.")
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	if _, code, done := fs.parse(args); done {
		return code
	}
	pw, err := readPassword(c.stdin, c.stderr)
	var h string
	if err == nil {
		h, err = policy.HashPassword(pw, *cost)
	}
	if err != nil {
		errorf(c.stderr, "passwd: %v", err)
		return exitRuntime
	}
	fmt.Fprintln(c.stdout, h)
	return exitOK
}

// readPassword prompts twice without echo on a terminal, or reads one line
// from a pipe.
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	f, ok := stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	var typed [2]string
	for i, prompt := range []string{"Password: ", "Again: "} {
		fmt.Fprint(stderr, prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		typed[i] = string(b)
	}
	if typed[0] != typed[1] {
		return "", errors.New("the passwords differ")
	}
	return typed[0], nil
}
