package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// timeCmd runs argv n times and returns each wall-clock duration.
func timeCmd(ctx context.Context, n int, argv ...string) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		start := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%v: %w: %s", argv, err, b)
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

// percentile returns the p-th percentile (0-100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p/100*float64(len(s))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// settleCPU waits until the machine is idle: a window of cpuQuiet in which
// the CPUs were idle at least 90% of the time (/proc/stat). Work the
// kernel defers, such as tearing down hundreds of namespaces after a
// destroy, would otherwise run inside the next phase's clock. Bounded
// like wsSettle; the log says how long it took.
func settleCPU(ctx context.Context, env *Env) {
	const cpuQuiet, cpuSettleMax = 250 * time.Millisecond, 60 * time.Second
	start := time.Now()
	for time.Since(start) < cpuSettleMax && ctx.Err() == nil {
		idle0, total0 := cpuTimes()
		time.Sleep(cpuQuiet)
		idle1, total1 := cpuTimes()
		if total1 > total0 && float64(idle1-idle0) >= 0.9*float64(total1-total0) {
			if d := time.Since(start); d > 2*cpuQuiet {
				env.Logf("settle: CPUs idle after %v", d.Round(time.Millisecond))
			}
			return
		}
	}
	env.Logf("settle: CPUs still busy after %v", time.Since(start).Round(time.Millisecond))
}

// cpuTimes is the idle (idle + iowait) and total jiffies of all CPUs.
func cpuTimes() (idle, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total
}
