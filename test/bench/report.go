package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func writeTable(w io.Writer, groups []Group) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tMETRIC\tCILO\tANCHOR\tANCHOR VALUE\tRATIO\tGOAL\tMET")
	for _, g := range groups {
		for _, r := range g.rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Name, r.Metric,
				value(r.Cilo, r.Unit), dash(r.AnchorName), anchorValue(r), ratio(r), r.Goal, yes(r.Met))
		}
	}
	tw.Flush()
}

// writeDoc rewrites path with the groups just measured. Sections of groups
// not run this time (make bench -only) are kept as they were, in their
// place; new ones go at the end.
func writeDoc(path string, groups []Group) error {
	var sections []string // "## name" blocks, in the file's order
	if old, err := os.ReadFile(path); err == nil {
		parts := strings.Split(string(old), "\n## ")
		for _, p := range parts[1:] {
			sections = append(sections, "## "+strings.TrimRight(p, "\n")+"\n")
		}
	}
	for _, g := range groups {
		var b strings.Builder
		fmt.Fprintf(&b, "## %s\n\n", g.Name)
		fmt.Fprintf(&b, "Reproduce: `make build && %s` (took %s, %s)\n\n", g.Command, g.took.Round(time.Second),
			time.Now().UTC().Format("2006-01-02 15:04 UTC"))
		fmt.Fprintf(&b, "| metric | cilo | anchor | anchor value | ratio | goal | met |\n|---|---|---|---|---|---|---|\n")
		for _, r := range g.rows {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.Metric,
				value(r.Cilo, r.Unit), dash(r.AnchorName), anchorValue(r), ratio(r), r.Goal, yes(r.Met))
		}
		i := slices.IndexFunc(sections, func(s string) bool { return strings.HasPrefix(s, "## "+g.Name+"\n") })
		if i < 0 {
			sections = append(sections, b.String())
		} else {
			sections[i] = b.String()
		}
	}
	host, _ := os.Hostname()
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Written by `make bench` (test/bench) on %s, %d cores, %s; each group's date is under its heading.\n",
		host, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "Every figure is measured side by side with its anchor in the same run; ratio = cilo / anchor.\n\n")
	fmt.Fprintf(&b, "Reproduce everything: `sudo make bench`; one group: the command under its heading.\n")
	for _, s := range sections {
		b.WriteString("\n" + s)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func value(v float64, unit string) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f %s", v, unit)
	case v >= 10:
		return fmt.Sprintf("%.1f %s", v, unit)
	default:
		return fmt.Sprintf("%.2f %s", v, unit)
	}
}

func anchorValue(r Row) string {
	if r.AnchorName == "" {
		return "-"
	}
	return value(r.Anchor, r.Unit)
}

func ratio(r Row) string {
	if q := r.Ratio(); q != 0 {
		return fmt.Sprintf("%.2fx", q)
	}
	return "-"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
