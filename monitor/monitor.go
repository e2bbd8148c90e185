// Package monitor is the HTTP endpoint operators and load balancers watch,
// on its own listen address (http_listen, off by default):
//
//	GET /healthz   200 while the process serves
//	GET /readyz    200 when berth can take a login now: the Docker engine
//	               answers and the host keys are loaded; else 503 and why
//
//	srv := &http.Server{Addr: cfg.HTTPListen, Handler: monitor.Handler(m, log)}
package monitor

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// Docker is what readiness needs from the container manager.
type Docker interface {
	Ping(ctx context.Context) error
}

// Handler serves /healthz and /readyz.
func Handler(d Docker, log *slog.Logger) http.Handler {
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
		fmt.Fprintln(w, "ready")
	})
	return mux
}
