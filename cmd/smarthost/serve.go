package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/upstream"
)

// shutdownGrace is how long open transactions may take after SIGTERM.
const shutdownGrace = 30 * time.Second

func serveCmd(args []string, stderr io.Writer) int {
	fs := newFlags("serve", stderr)
	path := fs.String("config", "", "configuration file (default: the embedded quickstart)")
	if _, err := parseFlags(fs, args); err != nil {
		return exitBadConfig
	}
	f, err := loadConfig(*path)
	if err != nil {
		printProblems(stderr, *path, err)
		return exitBadConfig
	}
	log := newLogger(f.Log, stderr)
	p, probs := compose(f, true, log)
	if len(probs) > 0 {
		printProblems(stderr, *path, probs)
		return exitBadConfig
	}

	for _, w := range p.warnings {
		log.Warn(w)
	}
	router, err := upstream.NewRouter(p.upstream, log)
	if err != nil {
		errorf(stderr, "%v", err)
		return exitBadConfig
	}
	defer router.Close()
	q, err := queue.Open(p.queue, router, log)
	if err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
	}
	defer q.Close()
	var certs certHolder
	if p.cert != nil {
		certs.c.Store(p.cert)
		p.relay.TLS = certs.tlsConfig(f.TLS.MinVersion)
	}
	p.deps.Queue = q
	limiter, closeLimiter := newLimiter(f)
	defer closeLimiter()
	p.deps.Quotas = ratelimit.NewQuotas(quotasConfig(f), limiter, log)
	var current atomic.Pointer[parts] // for the HTTP views
	current.Store(p)
	srv, err := relay.NewServer(p.relay, p.deps, log)
	if err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
	}
	if err := srv.Listen(); err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
	}
	var web *http.Server
	if f.Metrics.Listen != "" {
		ln, err := net.Listen("tcp", f.Metrics.Listen)
		if err != nil {
			errorf(stderr, "metrics.listen: %v", err)
			return exitRuntime
		}
		web = &http.Server{Handler: webHandler(&current, log), ReadHeaderTimeout: 10 * time.Second}
		go web.Serve(ln)
		log.Info("listening", "address", ln.Addr().String(), "mode", "http")
	}

	ctx, stopQueue := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		q.Run(ctx)
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	addrs := srv.Addrs()
	for i, l := range p.relay.Listeners {
		log.Info("listening", "address", addrs[i].String(), "mode", l.Mode)
	}
	log.Info("smarthost started", "version", version, "queued", q.Len())

	dir := p.ldap // closed when a reload replaces it
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	code := exitOK
loop:
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				if np, ok := reload(*path, srv, q, limiter, &certs, log); ok {
					current.Store(np)
					if old := dir; old != nil {
						// Sessions that started before the reload may use
						// the old directory a while longer.
						time.AfterFunc(shutdownGrace, old.Close)
					}
					dir = np.ldap
				}
				continue
			}
			log.Info("shutting down", "signal", s.String())
			break loop
		case err := <-serveErr:
			log.Error("listener failed", "err", err)
			code = exitRuntime
			break loop
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if web != nil {
		web.Shutdown(sctx)
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("closed sessions still open at the end of the grace period", "err", err)
	}
	stopQueue()
	wg.Wait()
	if dir != nil {
		dir.Close()
	}
	log.Info("stopped", "queued", q.Len())
	return code
}

// reload re-reads the configuration and swaps what can be swapped without
// dropping connections: users, policy, DKIM keys and the certificate.
// Listeners, the queue and upstreams need a restart.
//
// It returns the new parts, and false when it kept the running ones.
func reload(path string, srv *relay.Server, q *queue.Queue, limiter ratelimit.Limiter, certs *certHolder, log *slog.Logger) (*parts, bool) {
	f, err := loadConfig(path)
	if err != nil {
		log.Error("reload refused: configuration has problems; keeping the running one", "problems", err.Error())
		return nil, false
	}
	p, probs := compose(f, true, log)
	if len(probs) > 0 {
		log.Error("reload refused: configuration has problems; keeping the running one", "problems", probs.Error())
		return nil, false
	}
	if p.cert != nil {
		certs.c.Store(p.cert)
	}
	p.deps.Queue = q
	p.deps.Quotas = ratelimit.NewQuotas(quotasConfig(f), limiter, log)
	srv.Reload(p.deps)
	log.Info("configuration reloaded")
	return p, true
}

// webHandler serves the operators' HTTP endpoints on metrics.listen.
func webHandler(current *atomic.Pointer[parts], log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") }
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", ok)
	mux.Handle("GET /v1/limits/{user}", limitsHandler(func() (*ratelimit.Quotas, lookupFunc) {
		p := current.Load()
		return p.deps.Quotas, p.lookup
	}, log))
	return mux
}

func loadConfig(path string) (*configs.File, error) {
	if path == "" {
		return configs.Parse(configs.Quickstart)
	}
	return configs.Load(path)
}

func printProblems(w io.Writer, path string, err error) {
	if path == "" {
		path = "embedded quickstart"
	}
	var probs configs.Problems
	if errors.As(err, &probs) {
		fmt.Fprintf(w, "%s: %d problem(s):\n", path, len(probs))
		for _, p := range probs {
			fmt.Fprintf(w, "  %s\n", p)
		}
		return
	}
	fmt.Fprintf(w, "%s: %v\n", path, err)
}

func newLogger(c configs.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
