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
)

func passwdCmd(c cmdIO, args []string) int {
	fs := c.flags("passwd", "[--cost N]\n\nReads a password (twice without echo on a terminal, or one line on standard input)\nand prints its bcrypt hash for the static users file.")
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	if _, code, done := fs.parse(args); done {
		return code
	}
	stdin, stdout, stderr := c.stdin, c.stdout, c.stderr
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		errorf(stderr, "passwd: %v", err)
		return exitRuntime
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
	if err != nil {
		errorf(stderr, "passwd: %v", err)
		return exitRuntime
	}
	fmt.Fprintln(stdout, string(h))
	return exitOK
}

// readPassword prompts twice without echo on a terminal, or reads one line
// from a pipe.
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the passwords differ")
		}
		return nonEmpty(string(a))
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return nonEmpty(strings.TrimRight(line, "\r\n"))
}

func nonEmpty(pw string) (string, error) {
	if pw == "" {
		return "", errors.New("empty password")
	}
	if len(pw) > 72 {
		return "", errors.New("bcrypt uses at most 72 bytes of a password; use a shorter one")
	}
	return pw, nil
}
