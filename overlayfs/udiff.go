package overlayfs

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// splitLines splits data after each newline; a last line without one is
// kept as it is and printed with git's "\ No newline at end of file".
func splitLines(data []byte) []string {
	if len(data) == 0 {
		return nil
	}
	lines := strings.SplitAfter(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// op is one line of an edit script.
type op struct {
	kind byte // ' ', '-', '+'
	line string
}

// editScript returns a shortest edit script from a to b (Myers' O(ND)
// algorithm) after trimming the common prefix and suffix. Past maxD edits
// the middle is replaced wholesale: still a correct patch, just not minimal.
func editScript(a, b []string) []op {
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	var ops []op
	for _, l := range a[:pre] {
		ops = append(ops, op{' ', l})
	}
	ops = append(ops, myers(a[pre:len(a)-suf], b[pre:len(b)-suf])...)
	for _, l := range a[len(a)-suf:] {
		ops = append(ops, op{' ', l})
	}
	return ops
}

const maxD = 2000

func myers(a, b []string) []op {
	n, mm := len(a), len(b)
	max := n + mm
	if max == 0 {
		return nil
	}
	if n == 0 || mm == 0 {
		return replaceAll(a, b)
	}
	off := max + 1
	v := make([]int, 2*max+3)
	// trace[d] keeps v[-d-1..d+1] as it was before step d: all the
	// backtrack needs, in O(D^2) memory instead of O(D*(N+M)).
	var trace [][]int
	found := false
	for d := 0; d <= max && d <= maxD; d++ {
		trace = append(trace, append([]int(nil), v[off-d-1:off+d+2]...))
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = v[off+k+1]
			} else {
				x = v[off+k-1] + 1
			}
			y := x - k
			for x < n && y < mm && a[x] == b[y] {
				x++
				y++
			}
			v[off+k] = x
			if x >= n && y >= mm {
				found = true
				break
			}
		}
		if found {
			break
		}
	}
	if !found {
		return replaceAll(a, b)
	}
	// Walk the trace back from (n, mm).
	var rev []op
	x, y := n, mm
	for d := len(trace) - 1; d >= 0; d-- {
		vd := trace[d]
		at := func(k int) int { return vd[k+d+1] }
		k := x - y
		var pk int
		if k == -d || (k != d && at(k-1) < at(k+1)) {
			pk = k + 1
		} else {
			pk = k - 1
		}
		px := at(pk)
		py := px - pk
		for x > px && y > py {
			x--
			y--
			rev = append(rev, op{' ', a[x]})
		}
		if d > 0 {
			if x == px {
				y--
				rev = append(rev, op{'+', b[y]})
			} else {
				x--
				rev = append(rev, op{'-', a[x]})
			}
		}
	}
	for x > 0 && y > 0 {
		x--
		y--
		rev = append(rev, op{' ', a[x]})
	}
	ops := make([]op, len(rev))
	for i := range rev {
		ops[i] = rev[len(rev)-1-i]
	}
	return ops
}

func replaceAll(a, b []string) []op {
	var ops []op
	for _, l := range a {
		ops = append(ops, op{'-', l})
	}
	for _, l := range b {
		ops = append(ops, op{'+', l})
	}
	return ops
}

// unified writes the hunks of the edit script from a to b with ctx lines of
// context.
func unified(w io.Writer, a, b []string, ctx int) error {
	ops := editScript(a, b)
	i := 0
	for i < len(ops) {
		for i < len(ops) && ops[i].kind == ' ' {
			i++
		}
		if i == len(ops) {
			return nil
		}
		start := max(0, i-ctx)
		end := i
		// Extend the hunk while changes are closer than 2*ctx lines apart.
		for j := i; j < len(ops); j++ {
			if ops[j].kind != ' ' {
				end = j + 1
				continue
			}
			if j-end >= 2*ctx {
				break
			}
		}
		stop := min(len(ops), end+ctx)
		aStart, bStart := 1, 1
		for _, o := range ops[:start] {
			if o.kind != '+' {
				aStart++
			}
			if o.kind != '-' {
				bStart++
			}
		}
		aLen, bLen := 0, 0
		for _, o := range ops[start:stop] {
			if o.kind != '+' {
				aLen++
			}
			if o.kind != '-' {
				bLen++
			}
		}
		if _, err := fmt.Fprintf(w, "@@ -%s +%s @@\n", hunkRange(aStart, aLen), hunkRange(bStart, bLen)); err != nil {
			return err
		}
		for _, o := range ops[start:stop] {
			line := o.line
			nl := strings.HasSuffix(line, "\n")
			if nl {
				line = line[:len(line)-1]
			}
			if _, err := fmt.Fprintf(w, "%c%s\n", o.kind, line); err != nil {
				return err
			}
			if !nl {
				if _, err := io.WriteString(w, "\\ No newline at end of file\n"); err != nil {
					return err
				}
			}
		}
		i = stop
	}
	return nil
}

func hunkRange(start, n int) string {
	if n == 0 {
		return fmt.Sprintf("%d,0", start-1)
	}
	if n == 1 {
		return strconv.Itoa(start)
	}
	return fmt.Sprintf("%d,%d", start, n)
}

// quotePath quotes a path the way git does when it holds control
// characters, a double quote or a backslash.
func quotePath(prefix, p string) string {
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == '"' || c == '\\' || c == 0x7f {
			q := strconv.Quote(prefix + p)
			return q
		}
	}
	return prefix + p
}
