// Package daemon is the relay as a running process. New assembles it from
// a configuration file (assemble.go: each package's Config, with the files
// they name loaded), binds the SMTP listeners and the operators' HTTP
// endpoints (admin.go); Run serves until its context ends or a drain has
// emptied the queue; Reload swaps in a new configuration without dropping
// a connection. `smarthost serve` runs one, and a test can run one
// in-process.
package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay"
	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/inspect"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/smtpd"
	"github.com/smarthost/smarthost/relay/upstream"
)

// shutdownGrace is how long open transactions may take after a stop.
const shutdownGrace = 30 * time.Second

// Config is what a daemon runs.
type Config struct {
	// File is the configuration to start with.
	File *configs.File
	// Load reads the configuration again for Reload (serve: the same file,
	// at SIGHUP). Nil: Reload refuses.
	Load func() (*configs.File, error)
	// Version is the release, for the log line at start.
	Version string
}

// Daemon is a running relay: the SMTP server, the queue and its delivery,
// the operators' HTTP endpoints, and what a reload swaps.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	timing   *backendMetrics   // of the user directory and the limiter
	limiter  ratelimit.Limiter // timed; lives as long as the process
	tls      tlsMaterial
	queue    *queue.Queue
	shaper   *ratelimit.Shaper            // the upstreams' budgets, holds and sessions
	budgets  map[string]*ratelimit.Budget // by upstream name, as the router keeps them
	smtp     *smtpd.Server
	backend  *relay.Backend
	ready    *readiness
	drainer  *drainer
	admin    net.Addr         // metrics.listen's; nil without it
	history  *history.History // nil: history.enabled is false
	health   *inspect.Health  // each upstream's, for the status page

	current   atomic.Pointer[Assembly] // for the HTTP views and readiness
	reloading sync.Mutex               // one reload at a time
	closers   []func()                 // at Close, in reverse
	closing   sync.Once
}

// ConfigError is a mistake in the configuration that only assembling
// the relay finds (an upstream that cannot be set up, say), as opposed
// to the configs.Problems found by reading the file.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// New assembles cfg.File, opens the queue and binds every listener; Run
// serves them. Its error is configs.Problems or a *ConfigError for a bad
// configuration, another error for a failure of the machine (a port taken,
// a spool it cannot open).
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	d := &Daemon{cfg: cfg, log: log, registry: newRegistry()}
	d.timing = newBackendMetrics(d.registry)
	d.registry.MustRegister(newCertExpiry(&d.tls))
	if err := d.start(cfg.File); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) start(f *configs.File) error {
	a, probs := assemble(f, true, d.log, d.timing)
	if len(probs) > 0 {
		return probs
	}
	d.warn(a)
	if err := d.openObservers(a); err != nil {
		return err
	}
	limiter := d.openLimiter(f)
	if err := d.openQueue(f, a, limiter); err != nil {
		return err
	}
	d.adopt(f, a)
	if err := d.listen(f, a); err != nil {
		return err
	}
	d.ready = &readiness{q: d.queue, ping: d.pingBackends(limiter, f.RateLimit.OnBackendError == "tempfail")}
	peers, err := d.handoffPeers(a)
	if err != nil {
		return err
	}
	d.drainer = newDrainer(d.smtp, d.queue, peers, d.ready, d.log)
	return d.serveAdmin(f)
}

func (d *Daemon) warn(a *Assembly) {
	for _, w := range a.warnings {
		d.log.Warn(w)
	}
}

// openQueue opens the spool with the routes that deliver it, shaped by
// the upstreams' limits kept in store (the limiter's).
func (d *Daemon) openQueue(f *configs.File, a *Assembly, store ratelimit.Limiter) error {
	a.upstream.Metrics = upstream.NewMetrics(d.registry)
	shaper, err := d.newShaper(f, store)
	if err != nil {
		return &ConfigError{err}
	}
	a.upstream.Shaping.Shaper = shaper
	a.queue.Shaped = a.upstream.Metrics.Shaped
	router, err := upstream.NewRouter(a.upstream, d.log)
	if err != nil {
		return &ConfigError{err}
	}
	d.closers = append(d.closers, router.Close)
	d.shaper, d.budgets = shaper, router.Budgets()
	if d.queue, err = queue.Open(a.queue, router, d.log); err != nil {
		return err
	}
	q := d.queue
	d.closers = append(d.closers, func() { q.Close() })
	queueCollector(d.registry, q)
	return nil
}

// openLimiter makes the rate limiter, which a reload keeps (its classes
// change, never its counters); it returns the untimed one, to ping.
func (d *Daemon) openLimiter(f *configs.File) ratelimit.Limiter {
	if f.RateLimit.Backend == "redis" {
		redis.SetLogger(redisLog{d.log}) // go-redis keeps one logger per process
	}
	limiter, closeLimiter := newLimiter(f)
	d.closers = append(d.closers, func() { closeLimiter() })
	d.limiter = timedLimiter{limiter, f.RateLimit.Backend, d.timing}
	return limiter
}

// adopt gives a freshly assembled configuration what lives for the whole
// process, and makes it the current one.
func (d *Daemon) adopt(f *configs.File, a *Assembly) {
	a.deps.Queue = d.queue
	a.deps.Quotas = ratelimit.NewQuotas(quotasConfig(f), d.limiter, d.log)
	if a.cert != nil {
		d.tls.setCert(a.cert)
		d.tls.setTicketSecret(a.tickets)
	}
	d.current.Store(a)
}

// listen makes the SMTP server over the relay's backend and binds its
// listeners.
func (d *Daemon) listen(f *configs.File, a *Assembly) error {
	if a.cert != nil {
		a.smtp.TLS = d.tls.config(f.TLS)
	}
	a.backend.Metrics, a.backend.Log = relay.NewMetrics(d.registry), d.log
	d.backend = relay.NewBackend(a.backend, a.deps)
	a.smtp.Hooks, a.smtp.Log = d.backend.Hooks(), d.log
	d.smtp = smtpd.New(a.smtp, d.backend)
	if err := d.smtp.Listen(); err != nil {
		return err
	}
	d.closers = append(d.closers, func() { d.smtp.Close() })
	return nil
}

// handoffPeers is where a drain sends the queue (nil: queue.handoff names
// no peer).
func (d *Daemon) handoffPeers(a *Assembly) (queue.Deliverer, error) {
	if a.handoff == nil {
		return nil, nil
	}
	peers, err := upstream.NewRouter(*a.handoff, d.log)
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("queue.handoff: %w", err)}
	}
	d.closers = append(d.closers, peers.Close)
	return peers, nil
}

// Addrs is where a daemon listens.
type Addrs struct {
	SMTP  []net.Addr // in the order of the configuration's listeners
	Admin net.Addr   // metrics.listen's; nil without it
}

// Addrs says where the daemon listens, with the ports the system chose
// for port 0.
func (d *Daemon) Addrs() Addrs {
	return Addrs{SMTP: d.smtp.Addrs(), Admin: d.admin}
}

// Close releases what New opened, at once; Run calls it as it returns, so
// it is needed only for a daemon that is never run.
func (d *Daemon) Close() {
	d.closing.Do(func() {
		for i := len(d.closers) - 1; i >= 0; i-- {
			d.closers[i]()
		}
	})
}

// NewLogger is the logger log: asks for, writing to w.
func NewLogger(c configs.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
