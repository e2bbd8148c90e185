// Package metrics is berth's Prometheus instrumentation: what operators
// graph and alert on. It is served at /metrics on http_listen, beside
// /healthz and /readyz (package monitor).
//
//	met := metrics.New()
//	met.Auth("publickey", true)
//	ended := met.SessionStarted("alice")
//	defer ended("shell")
//	http.Handle("/metrics", met.Handler())
//
// A nil *Metrics records nothing, so parts built without metrics (tests,
// benchmarks) need no special case. Every method is safe for concurrent
// use.
package metrics

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berth-ssh/berth/gpus"
)

// Phases of a login, from the TCP accept to the user's process running.
const (
	PhaseAuth      = "auth"      // TCP accept to an authenticated connection
	PhaseContainer = "container" // making the container ready: build, create, start
	PhaseExec      = "exec"      // the agent starting the process
)

// Metrics holds berth's collectors on a registry of its own.
type Metrics struct {
	reg            *prometheus.Registry
	connections    *prometheus.CounterVec
	auths          *prometheus.CounterVec
	sessions       *prometheus.GaugeVec
	sessionSeconds *prometheus.HistogramVec
	phaseSeconds   *prometheus.HistogramVec
	builds         *prometheus.CounterVec
	buildSeconds   prometheus.Histogram
	forwards       *prometheus.CounterVec
	forwardBytes   *prometheus.CounterVec
}

// New returns berth's metrics, with Go's runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_connections_total",
			Help: "TCP connections, by result: accepted, or turned_away by max_startups and penalties.",
		}, []string{"result"}),
		auths: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_authentications_total",
			Help: "Authentication attempts by method, ok or failed. Keys only offered and accepted as a query are not counted.",
		}, []string{"method", "result"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_sessions_active",
			Help: "SSH sessions running now, by user (alice+NAME logins count as alice).",
		}, []string{"user"}),
		sessionSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_session_duration_seconds",
			Help:    "How long sessions lasted, by kind: shell, command, sftp or verb.",
			Buckets: []float64{0.1, 1, 10, 60, 600, 3600, 4 * 3600, 24 * 3600},
		}, []string{"kind"}),
		phaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_connect_phase_seconds",
			Help:    "Connect-to-ready latency by phase: auth, container (ensure the container) and exec (start the process).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"phase"}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_image_builds_total",
			Help: "Image builds, ok or failed.",
		}, []string{"result"}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "berth_image_build_duration_seconds",
			Help:    "How long image builds took.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800},
		}),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_forward_channels_total",
			Help: "Forwarding channels opened, by SSH channel type (direct-tcpip for ssh -L and -D, forwarded-tcpip for -R, auth-agent@openssh.com for -A, ...).",
		}, []string{"type"}),
		forwardBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_forward_bytes_total",
			Help: "Bytes carried by forwarding channels: in is from the client into the container, out the other way.",
		}, []string{"direction"}),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.connections, m.auths, m.sessions, m.sessionSeconds, m.phaseSeconds,
		m.builds, m.buildSeconds, m.forwards, m.forwardBytes,
	)
	return m
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	// A collector that fails (Docker or NVML down) loses its own series,
	// not the whole scrape: outages are when the rest is wanted most.
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Connection counts a TCP connection: accepted, or turned away.
func (m *Metrics) Connection(accepted bool) {
	if m == nil {
		return
	}
	result := "accepted"
	if !accepted {
		result = "turned_away"
	}
	m.connections.WithLabelValues(result).Inc()
}

// Auth counts an authentication attempt.
func (m *Metrics) Auth(method string, ok bool) {
	if m == nil {
		return
	}
	m.auths.WithLabelValues(method, okOrFailed(ok)).Inc()
}

// SessionStarted counts a running session of user until ended is called
// with its kind. It takes the user, not the login: alice+NAME names are
// the user's to choose, and each would be a series of its own.
func (m *Metrics) SessionStarted(user string) (ended func(kind string)) {
	if m == nil {
		return func(string) {}
	}
	began := time.Now()
	g := m.sessions.WithLabelValues(user)
	g.Inc()
	return func(kind string) {
		g.Dec()
		m.sessionSeconds.WithLabelValues(kind).Observe(time.Since(began).Seconds())
	}
}

// Phase records how long one phase of a login took.
func (m *Metrics) Phase(phase string, took time.Duration) {
	if m == nil {
		return
	}
	m.phaseSeconds.WithLabelValues(phase).Observe(took.Seconds())
}

// Build records an image build.
func (m *Metrics) Build(ok bool, took time.Duration) {
	if m == nil {
		return
	}
	m.builds.WithLabelValues(okOrFailed(ok)).Inc()
	m.buildSeconds.Observe(took.Seconds())
}

// Forward counts a forwarding channel of type typ. Its bytes are counted
// by writing them through the returned Meter.
func (m *Metrics) Forward(typ string) Meter {
	if m == nil {
		return Meter{}
	}
	m.forwards.WithLabelValues(typ).Inc()
	return Meter{m.forwardBytes.WithLabelValues("in"), m.forwardBytes.WithLabelValues("out")}
}

// Meter counts one forwarding channel's bytes. Its zero value counts
// nothing.
type Meter struct{ in, out prometheus.Counter }

// In wraps w, the writer toward the container, to count what passes.
func (mt Meter) In(w io.Writer) io.Writer { return counting(w, mt.in) }

// Out wraps w, the writer toward the client, to count what passes.
func (mt Meter) Out(w io.Writer) io.Writer { return counting(w, mt.out) }

func counting(w io.Writer, c prometheus.Counter) io.Writer {
	if c == nil {
		return w
	}
	return countingWriter{w, c}
}

type countingWriter struct {
	w io.Writer
	c prometheus.Counter
}

func (cw countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.c.Add(float64(n))
	return n, err
}

// GPUReport is where the GPU metrics come from: the inventory and who
// holds each GPU, keyed by UUID (containers.Manager.GPUReport).
type GPUReport func(ctx context.Context) (gpus.Snapshot, map[string][]gpus.Holder, error)

// WatchGPUs adds the GPU metrics, read from report at each scrape.
func (m *Metrics) WatchGPUs(report GPUReport) {
	m.reg.MustRegister(gpuCollector{report})
}

var (
	gpuUtilization = prometheus.NewDesc("berth_gpu_utilization_ratio",
		"GPU utilization over NVML's last sample period, 0 to 1.", []string{"gpu", "uuid", "name"}, nil)
	gpuMemoryUsed = prometheus.NewDesc("berth_gpu_memory_used_bytes",
		"GPU memory in use.", []string{"gpu", "uuid", "name"}, nil)
	gpuMemoryTotal = prometheus.NewDesc("berth_gpu_memory_total_bytes",
		"GPU memory in all.", []string{"gpu", "uuid", "name"}, nil)
	gpuLease = prometheus.NewDesc("berth_gpu_lease",
		"1 for each GPU given to a running container (a lease in exclusive mode, a share in shared mode).",
		[]string{"gpu", "uuid", "user", "container"}, nil)
)

// gpuCollector reads the GPUs when Prometheus scrapes, so the figures are
// as fresh as the scrape.
type gpuCollector struct{ report GPUReport }

func (c gpuCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- gpuUtilization
	ch <- gpuMemoryUsed
	ch <- gpuMemoryTotal
	ch <- gpuLease
}

func (c gpuCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	snap, holders, err := c.report(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(gpuLease, err)
		return
	}
	for _, g := range snap.GPUs {
		idx := strconv.Itoa(g.Index)
		if g.Utilization >= 0 {
			ch <- prometheus.MustNewConstMetric(gpuUtilization, prometheus.GaugeValue, float64(g.Utilization)/100, idx, g.UUID, g.Name)
		}
		ch <- prometheus.MustNewConstMetric(gpuMemoryUsed, prometheus.GaugeValue, float64(g.MemoryUsed), idx, g.UUID, g.Name)
		ch <- prometheus.MustNewConstMetric(gpuMemoryTotal, prometheus.GaugeValue, float64(g.MemoryTotal), idx, g.UUID, g.Name)
		for _, h := range holders[g.UUID] {
			ch <- prometheus.MustNewConstMetric(gpuLease, prometheus.GaugeValue, 1, idx, g.UUID, h.User, h.Container)
		}
	}
}

func okOrFailed(ok bool) string {
	if ok {
		return "ok"
	}
	return "failed"
}
