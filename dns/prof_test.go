package dns

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"testing"

	"github.com/cilo-dev/cilo/sandbox/state"
)

func TestProfileServer(t *testing.T) {
	if os.Getenv("PROF") == "" {
		t.Skip()
	}
	var envs []*state.Env
	for i := 0; i < 250; i++ {
		var svcs []state.Service
		for j := 0; j < 5; j++ {
			svcs = append(svcs, svc(fmt.Sprintf("svc%d", j), netip.AddrFrom4([4]byte{10, 251, byte(i), byte(10 + j)}).String()))
		}
		e := testEnv("bench", fmt.Sprintf("env%03d", i), 1, svcs...)
		e.Gateway = netip.Addr{}
		envs = append(envs, e)
	}
	_, addr := startServer(t, NewZone("test", envs, 1), nil)
	f, _ := os.Create("/tmp/cpu.prof")
	pprof.StartCPUProfile(f)
	p := strings.Split(addr, ":")[1]
	out, _ := exec.Command("dnsperf", "-s", "127.0.0.1", "-p", p, "-d", "/tmp/db/q.txt", "-l", "5", "-c", "4", "-T", "2", "-q", "200").CombinedOutput()
	pprof.StopCPUProfile()
	f.Close()
	t.Log(string(out))
}
