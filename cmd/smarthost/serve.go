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
	"runtime"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/smtpd"
	"github.com/smarthost/smarthost/relay/upstream"
)

// shutdownGrace is how long open transactions may take after SIGTERM.
const shutdownGrace = 30 * time.Second

// daemon is a running relay: what serve starts, reloads and stops.
type daemon struct {
	path    string
	log     *slog.Logger
	reg     *prometheus.Registry
	bm      *backendMetrics
	limiter ratelimit.Limiter
	certs   certHolder
	q       *queue.Queue
	srv     *smtpd.Server
	be      *relay.Backend
	ready   *readiness
	drain   *drainer
	current atomic.Pointer[parts] // for the HTTP views and readiness
	closers []func()              // at stop, in reverse
}

func serveCmd(c cmdIO, args []string) int {
	fs := c.flags("serve", "[--config FILE]\n\nRuns the relay until SIGTERM or SIGINT (graceful); SIGHUP reloads. Without --config it\nreads $SMARTHOST_CONFIG, else "+defaultConfig+" if it exists, else runs\nthe embedded quickstart (configs/quickstart.yaml), and logs which.")
	path := fs.String("config", "", "configuration file")
	if _, code, done := fs.parse(args); done {
		return code
	}
	stderr := c.stderr
	source := c.configSource(*path)
	f, err := loadConfig(source)
	if err != nil {
		printProblems(stderr, source, err)
		return exitBadConfig
	}
	d := &daemon{path: source, log: newLogger(f.Log, stderr), reg: newRegistry()}
	defer d.close()
	if source == "" {
		d.log.Info(quickstartNote)
	} else {
		d.log.Info("configuration", "file", source)
	}
	if code := d.start(f, stderr); code != exitOK {
		return code
	}
	return d.run()
}

func (d *daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}

// start composes the configuration, opens the queue, binds every listener
// and starts serving. It returns an exit code.
func (d *daemon) start(f *configs.File, stderr io.Writer) int {
	d.bm = newBackendMetrics(d.reg)
	p, probs := compose(f, true, d.log, d.bm)
	if len(probs) > 0 {
		printProblems(stderr, d.path, probs)
		return exitBadConfig
	}
	for _, w := range p.warnings {
		d.log.Warn(w)
	}
	p.upstream.Metrics = upstream.NewMetrics(d.reg)
	router, err := upstream.NewRouter(p.upstream, d.log)
	if err != nil {
		errorf(stderr, "%v", err)
		return exitBadConfig
	}
	d.closers = append(d.closers, router.Close)
	if d.q, err = queue.Open(p.queue, router, d.log); err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
	}
	d.closers = append(d.closers, func() { d.q.Close() })
	queueCollector(d.reg, d.q)

	redis.SetLogger(redisLog{d.log}) // go-redis keeps one logger per process
	limiter, closeLimiter := newLimiter(f)
	d.closers = append(d.closers, func() { closeLimiter() })
	d.limiter = timedLimiter{limiter, f.RateLimit.Backend, d.bm}
	d.finish(f, p)
	if p.cert != nil {
		d.certs.c.Store(p.cert)
		d.certs.setTicketSecret(p.tickets)
		p.smtp.TLS = d.certs.tlsConfig(f.TLS)
	}
	p.backend.Metrics, p.backend.Log = relay.NewMetrics(d.reg), d.log
	d.be = relay.NewBackend(p.backend, p.deps)
	p.smtp.Hooks, p.smtp.Log = d.be.Hooks(), d.log
	d.srv = smtpd.New(p.smtp, d.be)
	if err := d.srv.Listen(); err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
	}
	d.ready = &readiness{q: d.q, ping: d.pingBackends(limiter, f.RateLimit.OnBackendError == "tempfail")}
	var peers queue.Deliverer
	if p.handoff != nil {
		hr, err := upstream.NewRouter(*p.handoff, d.log)
		if err != nil {
			errorf(stderr, "queue.handoff: %v", err)
			return exitBadConfig
		}
		d.closers = append(d.closers, hr.Close)
		peers = hr
	}
	d.drain = newDrainer(d.srv, d.q, peers, d.ready, d.log)
	if f.Metrics.Listen != "" {
		ln, err := net.Listen("tcp", f.Metrics.Listen)
		if err != nil {
			errorf(stderr, "metrics.listen: %v", err)
			return exitRuntime
		}
		// /debug/pprof/mutex shows lock contention only if the runtime
		// samples it; one event in 100 costs next to nothing.
		runtime.SetMutexProfileFraction(100)
		a := &admin{reg: d.reg, ready: d.ready, current: &d.current, drain: d.drain.wait, log: d.log, open: loopback(f.Metrics.Listen)}
		web := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
		go web.Serve(ln)
		// Graceful: a drain's caller gets its answer before the process
		// ends.
		d.closers = append(d.closers, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			web.Shutdown(ctx)
		})
		d.log.Info("listening", "address", ln.Addr().String(), "mode", "http")
	}
	return exitOK
}

// finish gives freshly composed parts what lives for the whole process.
func (d *daemon) finish(f *configs.File, p *parts) {
	p.deps.Queue = d.q
	p.deps.Quotas = ratelimit.NewQuotas(quotasConfig(f), d.limiter, d.log)
	d.current.Store(p)
}

// pingBackends checks LDAP when it is configured, and Redis when its
// outage refuses mail (tempfail).
func (d *daemon) pingBackends(limiter ratelimit.Limiter, tempfail bool) func(context.Context) []string {
	return func(ctx context.Context) []string {
		var probs []string
		if dir := d.current.Load().ldap; dir != nil {
			if err := dir.Ping(ctx); err != nil {
				probs = append(probs, "ldap: "+err.Error())
			}
		}
		if r, ok := limiter.(*ratelimit.Redis); ok && tempfail {
			if err := r.Ping(ctx); err != nil {
				probs = append(probs, "redis: "+err.Error())
			}
		}
		return probs
	}
}

// run serves until a signal says stop; SIGHUP reloads.
func (d *daemon) run() int {
	ctx, stopQueue := context.WithCancel(context.Background())
	queueDone := make(chan struct{})
	go func() {
		d.q.Run(ctx)
		close(queueDone)
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- d.srv.Serve() }()
	d.ready.serves.Store(true)
	p := d.current.Load()
	for i, a := range d.srv.Addrs() {
		d.log.Info("listening", "address", a.String(), "mode", p.smtp.Listeners[i].Mode)
	}
	d.log.Info("smarthost started", "version", version, "queued", d.q.Len())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	code := exitOK
loop:
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				d.reload()
				continue
			}
			d.log.Info("shutting down", "signal", s.String())
			break loop
		case err := <-serveErr:
			if err == nil { // the listeners closed for a drain
				serveErr = nil
				continue
			}
			d.log.Error("listener failed", "err", err)
			code = exitRuntime
			break loop
		case <-d.drain.done():
			break loop
		}
	}
	d.ready.serves.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := d.srv.Shutdown(sctx); err != nil {
		d.log.Warn("closed sessions still open at the end of the grace period", "err", err)
	}
	stopQueue()
	<-queueDone
	if dir := d.current.Load().ldap; dir != nil {
		dir.Close()
	}
	d.log.Info("stopped", "queued", d.q.Len())
	return code
}

// reload re-reads the configuration and swaps what can be swapped without
// dropping connections: listeners (changed ones are rebound; sessions on a
// removed one finish), users, policy, limits, DKIM keys and the
// certificate. The queue, upstreams and the rate-limit backend need a
// restart. A configuration with problems is refused and the running one
// kept.
func (d *daemon) reload() {
	f, err := loadConfig(d.path)
	if err != nil {
		d.log.Error("reload refused: configuration has problems; keeping the running one", "problems", err.Error())
		return
	}
	p, probs := compose(f, true, d.log, d.bm)
	if len(probs) > 0 {
		d.log.Error("reload refused: configuration has problems; keeping the running one", "problems", probs.Error())
		return
	}
	for _, w := range p.warnings {
		d.log.Warn(w)
	}
	old := d.current.Load()
	if !slices.Equal(old.smtp.Listeners, p.smtp.Listeners) {
		if err := d.srv.SetListeners(p.smtp.Listeners, shutdownGrace); err != nil {
			d.log.Error("reload refused: cannot change the listeners; keeping the running configuration", "err", err)
			return
		}
	}
	d.finish(f, p)
	if p.cert != nil {
		d.certs.c.Store(p.cert)
		d.certs.setTicketSecret(p.tickets)
	}
	d.be.Reload(p.deps)
	d.srv.SetLimits(p.smtp.Limits)
	if old.ldap != nil {
		// Sessions that started before the reload may use the old
		// directory a while longer.
		time.AfterFunc(shutdownGrace, old.ldap.Close)
	}
	d.log.Info("configuration reloaded")
}

func loadConfig(path string) (*configs.File, error) {
	if path == "" {
		return configs.LoadQuickstart()
	}
	return configs.Load(path)
}

// sourceName names a configuration source for messages.
func sourceName(path string) string {
	if path == "" {
		return "embedded quickstart"
	}
	return path
}

func printProblems(w io.Writer, path string, err error) {
	path = sourceName(path)
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
