package dns

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// resolvedStub is systemd-resolved's local stub listener; when the host's
// resolv.conf names it, the real upstreams are in resolved's own file.
var resolvedStubs = []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("127.0.0.54")}

// Upstreams is the host's list of upstream resolvers, read from
// resolv.conf and re-read when the file changes (checked at most once a
// second), so a DHCP renewal or a VPN is picked up without a restart.
// It is safe for concurrent use.
type Upstreams struct {
	path, resolvedPath string
	skip               []netip.AddrPort

	mu      sync.Mutex
	checked time.Time
	stamp   string
	list    []string
}

// NewUpstreams reads nameservers from path (normally /etc/resolv.conf). If
// that lists systemd-resolved's stub, resolvedPath (normally
// /run/systemd/resolve/resolv.conf) is read instead. Addresses in skip
// (the server's own listeners) and resolved's stubs are never returned: a
// forwarder must not forward to itself.
func NewUpstreams(path, resolvedPath string, skip []netip.AddrPort) *Upstreams {
	return &Upstreams{path: path, resolvedPath: resolvedPath, skip: skip}
}

// List returns the upstreams as host:port strings, in resolv.conf order.
func (u *Upstreams) List() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	if now.Sub(u.checked) < time.Second && u.stamp != "" {
		return u.list
	}
	u.checked = now
	stamp := fileStamp(u.path) + "|" + fileStamp(u.resolvedPath)
	if stamp == u.stamp {
		return u.list
	}
	u.stamp = stamp
	u.list = u.read()
	return u.list
}

func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "-"
	}
	return fmt.Sprintf("%d/%d", fi.ModTime().UnixNano(), fi.Size())
}

func (u *Upstreams) read() []string {
	b, _ := os.ReadFile(u.path)
	addrs := Nameservers(b)
	if slices.ContainsFunc(addrs, func(a netip.Addr) bool { return slices.Contains(resolvedStubs, a) }) && u.resolvedPath != "" {
		if rb, err := os.ReadFile(u.resolvedPath); err == nil {
			addrs = Nameservers(rb)
		}
	}
	var out []string
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, 53)
		if slices.Contains(resolvedStubs, a) || slices.Contains(u.skip, ap) || slices.Contains(out, ap.String()) {
			continue
		}
		out = append(out, ap.String())
	}
	return out
}

// Nameservers returns the addresses of the nameserver lines of a
// resolv.conf, skipping malformed ones.
func Nameservers(resolvConf []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(resolvConf))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}
