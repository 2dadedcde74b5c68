// Command bench runs every cilo benchmark side by side with its anchor (the
// tool a user would otherwise reach for) in one run, prints a table of
// ratios and rewrites docs/benchmarks.md with the figures and the command
// that reproduces them.
//
// It runs as root on Linux: most benchmarks create real namespaces, mounts
// and containers, each under its own state root and address-pool slice so a
// run never touches a user's environments.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	only := flag.String("only", "", "run only the groups whose name contains this (comma separated)")
	doc := flag.String("doc", "docs/benchmarks.md", "markdown file to rewrite with the results (empty: don't)")
	cilo := flag.String("cilo", "bin/cilo", "cilo binary under test")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	bin, err := filepath.Abs(*cilo)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("cilo binary %s: %w (run make build first)", bin, err)
	}
	env := &Env{Cilo: bin, Log: os.Stderr}

	var results []Group
	for _, g := range groups() {
		if !selected(g.Name, *only) {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s\n", g.Name)
		start := time.Now()
		rows, err := g.Run(ctx, env)
		if err != nil {
			return fmt.Errorf("benchmark %s: %w", g.Name, err)
		}
		results = append(results, Group{Name: g.Name, Command: g.Command, rows: rows, took: time.Since(start)})
	}
	writeTable(os.Stdout, results)
	if *doc != "" {
		return writeDoc(*doc, results)
	}
	return nil
}

func selected(name, only string) bool {
	if only == "" {
		return true
	}
	for _, o := range strings.Split(only, ",") {
		if o != "" && strings.Contains(name, o) {
			return true
		}
	}
	return false
}

// Env is what every benchmark gets: the binary under test and where to log
// progress.
type Env struct {
	Cilo string
	Log  io.Writer
}

// Logf prints progress to stderr so stdout stays the result table.
func (e *Env) Logf(format string, args ...any) {
	fmt.Fprintf(e.Log, "   "+format+"\n", args...)
}

// Group is one area's benchmarks (core, workspace, dns, compose).
type Group struct {
	Name    string
	Command string // how to reproduce just this group
	Run     func(ctx context.Context, env *Env) ([]Row, error)

	rows []Row
	took time.Duration
}

// Row is one measured figure, cilo's next to its anchor's.
type Row struct {
	Metric     string  // what was measured, e.g. "cilo run true <env>"
	Unit       string  // "ms", "qps", "MB", ...
	Cilo       float64 // cilo's figure
	AnchorName string  // e.g. "ip netns exec NS true"; empty when the figure has no anchor
	Anchor     float64
	Goal       string // e.g. "ratio <= 1.5" or "p99 <= 100 ms"
	Met        bool
}

// Ratio is cilo's figure over the anchor's (0 without an anchor).
func (r Row) Ratio() float64 {
	if r.AnchorName == "" || r.Anchor == 0 {
		return 0
	}
	return r.Cilo / r.Anchor
}

func groups() []Group {
	return []Group{
		coreGroup(),
		workspaceGroup(),
		dnsGroup(),
		composeGroup(),
	}
}
