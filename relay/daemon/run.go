package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
)

// Run serves until ctx ends (a stop), a listener fails (its error), or a
// drain has emptied the queue. Then the listeners close, open sessions get
// shutdownGrace to finish, deliveries in flight are cut short (their
// messages stay queued), and everything New opened is released.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.Close()
	queueCtx, stopQueue := context.WithCancel(context.Background())
	queueDone := make(chan struct{})
	go func() {
		d.queue.Run(queueCtx)
		close(queueDone)
	}()
	served := make(chan error, 1)
	go func() { served <- d.smtp.Serve() }()
	d.ready.serves.Store(true)
	a := d.current.Load()
	for i, addr := range d.smtp.Addrs() {
		d.log.Info("listening", "address", addr.String(), "mode", a.smtp.Listeners[i].Mode)
	}
	d.log.Info("smarthost started", "version", d.cfg.Version, "queued", d.queue.Len())

	err := d.serve(ctx, served)

	d.ready.serves.Store(false)
	d.drainer.stop()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := d.smtp.Shutdown(sctx); err != nil {
		d.log.Warn("closed sessions still open at the end of the grace period", "err", err)
	}
	stopQueue()
	<-queueDone
	if dir := d.current.Load().ldap; dir != nil {
		dir.Close()
	}
	d.log.Info("stopped", "queued", d.queue.Len())
	return err
}

// serve waits for the end of Run: a stop, a listener failing, or a drain
// done.
func (d *Daemon) serve(ctx context.Context, served <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			d.log.Info("shutting down", "cause", context.Cause(ctx).Error())
			return nil
		case err := <-served:
			if err == nil { // the listeners closed for a drain
				served = nil
				continue
			}
			d.log.Error("listener failed", "err", err)
			return err
		case <-d.drainer.done():
			return nil
		}
	}
}

// RunWithSignals is Run until SIGTERM or SIGINT; SIGHUP reloads.
func (d *Daemon) RunWithSignals() error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sig)
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	go func() {
		for {
			select {
			case s := <-sig:
				if s == syscall.SIGHUP {
					d.Reload()
					continue
				}
				stop(fmt.Errorf("signal %s", s))
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return d.Run(ctx)
}

var errNoLoad = errors.New("reload: the daemon was given no way to read its configuration again")

// Reload reads the configuration again (Config.Load) and swaps in what can
// be swapped without dropping connections: listeners (changed ones are
// rebound; sessions on a removed one finish), users, policy, limits, DKIM
// keys and the certificate. The queue, upstreams and the rate-limit
// backend need a restart. A configuration with problems is refused (and
// returned) and the running one kept.
func (d *Daemon) Reload() error {
	d.reloading.Lock()
	defer d.reloading.Unlock()
	if d.cfg.Load == nil {
		return errNoLoad
	}
	f, err := d.cfg.Load()
	if err != nil {
		d.log.Error("reload refused: configuration has problems; keeping the running one", "problems", err.Error())
		return err
	}
	a, probs := assemble(f, true, d.log, d.timing)
	if len(probs) > 0 {
		d.log.Error("reload refused: configuration has problems; keeping the running one", "problems", probs.Error())
		return probs
	}
	d.warn(a)
	old := d.current.Load()
	if !slices.Equal(old.smtp.Listeners, a.smtp.Listeners) {
		if err := d.smtp.SetListeners(a.smtp.Listeners, shutdownGrace); err != nil {
			d.log.Error("reload refused: cannot change the listeners; keeping the running configuration", "err", err)
			return err
		}
	}
	d.swap(f, old, a)
	d.log.Info("configuration reloaded")
	return nil
}

// swap makes a the running configuration in place of old.
func (d *Daemon) swap(f *configs.File, old, a *Assembly) {
	d.adopt(f, a)
	d.backend.Reload(a.deps)
	d.smtp.SetLimits(a.smtp.Limits)
	if old.ldap != nil {
		// Sessions that started before the reload may use the old
		// directory a while longer.
		time.AfterFunc(shutdownGrace, old.ldap.Close)
	}
}

// pingBackends checks LDAP when it is configured, and Redis when its
// outage refuses mail (tempfail).
func (d *Daemon) pingBackends(limiter ratelimit.Limiter, tempfail bool) func(context.Context) []string {
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
