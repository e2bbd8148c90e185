// Package monitor is the HTTP endpoint operators, load balancers and
// Prometheus watch, on its own listen address (http_listen, off by
// default):
//
//	GET /healthz   200 while the process serves
//	GET /readyz    200 when berth can take a login now: the Docker engine
//	               answers, the host keys are loaded and every user's keys
//	               read cleanly; else 503 and why
//	GET /metrics   Prometheus metrics (package metrics)
//
//	srv := &http.Server{Addr: cfg.HTTPListen, Handler: monitor.Handler(m, book, met, log)}
package monitor

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/berth-ssh/berth/metrics"
)

// Docker is what readiness needs from the container manager.
type Docker interface {
	Ping(ctx context.Context) error
}

// Keys is what readiness needs from the key book: whether every user's
// keys read cleanly now.
type Keys interface {
	Check() error
}

// Handler serves /healthz, /readyz and /metrics. The host keys are loaded
// before the gateway exists, so a running Handler implies them.
func Handler(d Docker, k Keys, met *metrics.Metrics, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := d.Ping(ctx); err != nil {
			log.Warn("not ready: the Docker engine does not answer", "err", err)
			http.Error(w, "not ready: the Docker engine does not answer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := k.Check(); err != nil {
			log.Warn("not ready: users' keys do not read cleanly", "err", err)
			http.Error(w, "not ready: users' keys do not read cleanly: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if met != nil {
		mux.Handle("GET /metrics", met.Handler())
	}
	return mux
}
