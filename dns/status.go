package dns

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	mdns "github.com/miekg/dns"
)

// Status is the health of the DNS daemon as `cilo dns status` shows it.
// Its JSON form is stable.
type Status struct {
	Running   bool      `json:"running"` // a daemon holds the pidfile lock
	PID       int       `json:"pid,omitempty"`
	Healthy   bool      `json:"healthy"` // it answered the SOA of the suffix just now
	LatencyMS float64   `json:"latency_ms,omitempty"`
	Error     string    `json:"error,omitempty"` // why it is not healthy
	Addr      string    `json:"addr"`
	Suffix    string    `json:"suffix"`
	Serial    uint32    `json:"serial,omitempty"`
	Envs      int       `json:"envs"`
	Names     int       `json:"names"`
	Records   int       `json:"records"`
	Contested []string  `json:"contested,omitempty"` // short names several envs claim
	Listen    []string  `json:"listen,omitempty"`
	EnvListen []string  `json:"env_listen,omitempty"`
	Upstreams []string  `json:"upstreams,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Updated   time.Time `json:"updated,omitzero"` // last zone rebuild
	Systemd   bool      `json:"systemd"`          // `cilo init` installed the unit
	Resolver  string    `json:"resolver"`         // how the host resolves the suffix
	LogFile   string    `json:"log_file,omitempty"`
}

// GetStatus checks the daemon: is it running, does it answer, and what
// does it serve. A daemon that is not running is not an error.
func GetStatus(ctx context.Context, cfg Config) (*Status, error) {
	st := &Status{Addr: cfg.Addr, Suffix: cfg.Suffix, Resolver: "none (run cilo init)", LogFile: cfg.LogFile()}
	st.PID, st.Running = running(cfg)
	if rec, err := readInitRecord(cfg); err == nil {
		st.Systemd = rec.Unit != ""
		switch {
		case rec.ResolvedDropIn == "" && rec.ResolvConf == nil:
			st.Resolver = "not set up: no systemd-resolved here (see cilo init, or cilo init --force)"
		case rec.ResolvedDropIn != "":
			st.Resolver = "systemd-resolved drop-in " + rec.ResolvedDropIn
		case rec.ResolvConf != nil:
			st.Resolver = "/etc/resolv.conf (cilo init --force), stub " + rec.Stub
		}
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	rtt, err := probe(pctx, cfg.Addr, cfg.Suffix)
	cancel()
	if err != nil {
		st.Error = err.Error()
	} else {
		st.Healthy = true
		st.LatencyMS = float64(rtt) / float64(time.Millisecond)
	}
	if b, err := os.ReadFile(cfg.StatusFile()); err == nil && st.Running {
		var info statusInfo
		if err := json.Unmarshal(b, &info); err == nil {
			st.Serial, st.Envs, st.Names, st.Records = info.Serial, info.Envs, info.Names, info.Records
			st.Contested = info.Contested
			st.Listen, st.EnvListen, st.Upstreams = info.Listen, info.EnvListen, info.Upstreams
			st.Started, st.Updated = info.Started, info.Updated
		}
	}
	return st, nil
}

// probe asks addr for the SOA of suffix: the cheapest question only a
// working cilo server answers authoritatively.
func probe(ctx context.Context, addr, suffix string) (time.Duration, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.CanonicalName(suffix), mdns.TypeSOA)
	c := &mdns.Client{Net: "udp", Timeout: time.Second}
	r, rtt, err := c.ExchangeContext(ctx, m, addr)
	if err != nil {
		return 0, fmt.Errorf("query %s: %w", addr, err)
	}
	if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || len(r.Answer) == 0 {
		return 0, fmt.Errorf("query %s: unexpected answer %s (another server on that address?)", addr, mdns.RcodeToString[r.Rcode])
	}
	return rtt, nil
}
