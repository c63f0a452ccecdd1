package daemon

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/inspect"
	"github.com/smarthost/smarthost/relay/queue"
)

// readiness answers /readyz: listeners up, spool writable, LDAP answering
// when configured, and Redis answering when a Redis outage refuses mail
// (on_backend_error: tempfail; with allow the relay goes on without it, so
// it is still ready). Results are kept for a second so that probes cannot
// hammer the backends.
type readiness struct {
	q      *queue.Queue
	ping   func(context.Context) []string // backend problems
	mu     sync.Mutex
	at     time.Time
	last   []string
	serves atomic.Bool
}

func (r *readiness) check(ctx context.Context) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.at) < time.Second {
		return r.last
	}
	var probs []string
	if !r.serves.Load() {
		probs = append(probs, "listeners: not serving")
	}
	if err := r.q.Writable(); err != nil {
		probs = append(probs, "queue: "+err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	probs = append(probs, r.ping(ctx)...)
	r.at, r.last = time.Now(), probs
	return probs
}

// serveAdmin serves the operators' HTTP endpoints on metrics.listen, if
// set, until Close.
func (d *Daemon) serveAdmin(f *configs.File) error {
	if f.Metrics.Listen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", f.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics.listen: %w", err)
	}
	// /debug/pprof/mutex shows lock contention only if the runtime
	// samples it; one event in 100 costs next to nothing.
	runtime.SetMutexProfileFraction(100)
	a := &admin{registry: d.registry, ready: d.ready, current: &d.current, drain: d.Drain, log: d.log, open: loopback(f.Metrics.Listen),
		inspect: d.inspectConfig(f), upstreams: func(ctx context.Context, name string) (*UpstreamView, error) {
			return showUpstream(ctx, d.shaper, name, d.budgets[name])
		}}
	web := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	go web.Serve(ln)
	d.admin = ln.Addr()
	// Graceful: a drain's caller gets its answer before the process ends.
	d.closers = append(d.closers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		web.Shutdown(ctx)
	})
	d.log.Info("listening", "address", ln.Addr().String(), "mode", "http")
	return nil
}

// admin is what the operators' HTTP endpoints (metrics.listen) need. A new
// endpoint is a line of handler; one that tells about users or mail goes
// behind guard.
type admin struct {
	registry *prometheus.Registry
	ready    *readiness
	current  *atomic.Pointer[Assembly]
	drain    func(ctx context.Context) error // hands the queue over; returns once it is empty
	log      *slog.Logger
	// open: the listener is on loopback, where /v1/ and pprof need no
	// token.
	open    bool
	inspect inspect.Config // the history, the queue and the status page
	// upstreams shows an upstream's budget.
	upstreams func(ctx context.Context, name string) (*UpstreamView, error)
}

// handler serves /metrics, /healthz, /readyz, /v1/limits/{user},
// /v1/upstreams/{name}/limits, POST /v1/drain, the history, queue and status page of relay/inspect
// and, with metrics.pprof, /debug/pprof/.
func (a *admin) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if probs := a.ready.check(r.Context()); len(probs) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, strings.Join(probs, "\n")+"\n")
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /v1/limits/{user}", a.guard(limitsHandler(func() (*ratelimit.Quotas, lookupFunc) {
		current := a.current.Load()
		return current.deps.Quotas, current.lookup
	}, a.log)))
	mux.Handle("GET /v1/upstreams/{name}/limits", a.guard(upstreamHandler(a.upstreams, a.log)))
	mux.Handle("POST /v1/drain", a.write(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.drain(r.Context()); err != nil {
			http.Error(w, "drain: "+err.Error(), http.StatusConflict)
			return
		}
		io.WriteString(w, "drained: the queue is empty\n")
	})))
	inspect.Routes(mux, a.guard, a.write, a.inspect)
	// Profiles show where time goes under load, and what a process holds:
	// only where asked for.
	pp := http.NewServeMux()
	pp.HandleFunc("/debug/pprof/", pprof.Index)
	pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
	pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// GET only: nothing there is for a form to post to.
	mux.Handle("GET /debug/pprof/", a.guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.current.Load().pprof {
			http.NotFound(w, r)
			return
		}
		pp.ServeHTTP(w, r)
	})))
	return mux
}

// RequestHeader is the header smarthost's commands send with a request
// that changes something (RequestHeader: 1); see admin.write.
const RequestHeader = "X-Smarthost-Request"

// guard lets a request through on a loopback listener, or with the bearer
// token of metrics.token_file; without a token configured, a listener
// elsewhere serves none of it (it would tell anyone which users exist).
// On loopback it answers only requests addressed to a loopback host: a
// page whose name an attacker rebinds to 127.0.0.1 sends its own name.
func (a *admin) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.open {
			if !loopback(r.Host) {
				http.Error(w, "on a loopback listener, address the relay as 127.0.0.1, [::1] or localhost", http.StatusForbidden)
				return
			}
			h.ServeHTTP(w, r)
			return
		}
		token := a.current.Load().token
		if token == "" {
			http.Error(w, "set metrics.token_file to use this off loopback", http.StatusForbidden)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="smarthost"`)
			http.Error(w, "bearer token required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// write guards an endpoint that changes something (the queue, a drain).
// On loopback guard asks for no token, so a web page in the
// administrator's browser could post a form there; a browser sends a
// cross-site request without a preflight only with simple headers, and
// marks it with Sec-Fetch-Site or Origin. So write asks for a header no
// form can set (RequestHeader, or Authorization) and refuses a request a
// browser marks as from another site (http.CrossOriginProtection).
func (a *admin) write(h http.Handler) http.Handler {
	marked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(RequestHeader) == "" && r.Header.Get("Authorization") == "" {
			http.Error(w, "send the header "+RequestHeader+": 1 (smarthost's commands do)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
	return a.guard(http.NewCrossOriginProtection().Handler(marked))
}

// loopback reports whether a listen address or a request's Host (with or
// without a port) is a loopback one.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
