package main

import (
	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
)

func serveCmd(c cmdline.IO, args []string) int {
	fs := c.Flags("serve", "[--config FILE]\n\nRuns the relay until SIGTERM or SIGINT (graceful); SIGHUP reloads. Without --config it\nreads $SMARTHOST_CONFIG, else "+configs.DefaultPath+" if it exists, else runs\nthe embedded quickstart (configs/quickstart.yaml), and logs which.")
	path := fs.String("config", "", "configuration file")
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	source := configs.Find(*path, c.Getenv)
	f, err := configs.LoadFound(source)
	if err != nil {
		configs.Print(c.Stderr, source, err)
		return cmdline.BadConfig
	}
	log := daemon.NewLogger(f.Log, c.Stderr)
	if source == "" {
		log.Info(configs.QuickstartNote)
	} else {
		log.Info("configuration", "file", source)
	}
	d, err := daemon.New(daemon.Config{File: f, Load: func() (*configs.File, error) { return configs.LoadFound(source) }, Version: version}, log)
	if err != nil {
		return fail(c, source, "", err)
	}
	if err := d.RunWithSignals(); err != nil {
		return cmdline.Runtime
	}
	return cmdline.OK
}
