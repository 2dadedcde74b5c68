package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/overlayfs"
	"github.com/cilo-dev/cilo/overlayfs/loopfs"
)

// workspaceGroup measures workspaces (package overlayfs, called in process
// so the figures are the workspace's own, without CLI start-up) against
// `git worktree add` and `cp -a` of the same repository: a git repository
// made from Go's own src tree, plus synthetic 1k and 50k file repositories
// for the flatness check.
func workspaceGroup() Group {
	return Group{Name: "workspace", Command: "sudo go run ./test/bench -only workspace", Run: runWorkspace}
}

const (
	wsFirstRuns   = 3  // first env and its anchors: each run copies the tree
	wsFurtherRuns = 10 // further envs of one state
	wsEditRuns    = 5  // envs after editing 3 files
)

func runWorkspace(ctx context.Context, env *Env) ([]Row, error) {
	tmp, err := os.MkdirTemp("/var/tmp", "cilo-bench-ws-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	goSrc, err := goSrcDir(ctx)
	if err != nil {
		return nil, err
	}
	env.Logf("fixture: git repository of %s", goSrc)
	fixture := filepath.Join(tmp, "gosrc")
	if err := wsShell(ctx, "", "cp", "-a", goSrc, fixture); err != nil {
		return nil, err
	}
	if err := wsGitInit(ctx, fixture); err != nil {
		return nil, err
	}
	files, err := wsCountFiles(fixture)
	if err != nil {
		return nil, err
	}
	env.Logf("fixture: %d files", files)
	settle := func() { wsSettle(ctx, env, tmp) }

	var rows []Row
	settle()
	// First env on this machine's filesystem (ext4: no reflink, copy).
	first, err := wsFirstEnv(ctx, env, fixture, "ext4", settle)
	if err != nil {
		return nil, err
	}
	rows = append(rows, first...)

	// First env where reflink is available: an XFS image with reflink=1.
	settle()
	xfsRows, err := wsReflinkFirstEnv(ctx, env, tmp, fixture)
	if err != nil {
		return nil, err
	}
	rows = append(rows, xfsRows...)

	// Further envs at three repository sizes.
	settle()
	wt, err := wsWorktreeMedian(ctx, fixture, tmp, wsFirstRuns, settle)
	if err != nil {
		return nil, err
	}
	small := filepath.Join(tmp, "synth-1k")
	large := filepath.Join(tmp, "synth-50k")
	for _, s := range []struct {
		dir string
		n   int
	}{{small, 1000}, {large, 50000}} {
		env.Logf("synthesizing a %d-file repository", s.n)
		if err := wsSynth(s.dir, s.n); err != nil {
			return nil, err
		}
		if err := wsGitInit(ctx, s.dir); err != nil {
			return nil, err
		}
	}
	settle()
	further, err := wsFurther(ctx, env, tmp, settle, []wsRepo{
		{"1k files", small},
		{fmt.Sprintf("%.1fk files (Go src)", float64(files)/1000), fixture},
		{"50k files", large},
	})
	if err != nil {
		return nil, err
	}
	rows = append(rows, further...)

	// An env after editing 3 files, and the disk 10 envs use.
	settle()
	r, err := wsAfterEdit(ctx, env, tmp, fixture, wt, settle)
	if err != nil {
		return nil, err
	}
	rows = append(rows, r)
	settle()
	r, err = wsDisk(ctx, env, tmp, fixture)
	if err != nil {
		return nil, err
	}
	rows = append(rows, r)
	return rows, nil
}

func goSrcDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT: %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "src"), nil
}

func wsShell(ctx context.Context, dir string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
	}
	return nil
}

// wsGitInit commits the whole tree and packs it, as a user's clone is.
func wsGitInit(ctx context.Context, dir string) error {
	for _, argv := range [][]string{
		{"git", "init", "-q"},
		{"git", "add", "-A"},
		{"git", "-c", "gc.auto=0", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qm", "fixture", "--no-verify"},
		{"git", "gc", "-q", "--prune=now"},
	} {
		if err := wsShell(ctx, dir, argv...); err != nil {
			return err
		}
	}
	return nil
}

func wsCountFiles(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == ".git" {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			n++
		}
		return nil
	})
	return n, err
}

// wsSynth writes n small source files, 100 to a directory.
func wsSynth(dir string, n int) error {
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("pkg%03d", i/100))
		if i%100 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		body := fmt.Sprintf("package pkg%03d\n\n// F%d is generated.\nfunc F%d() int { return %d }\n", i/100, i, i, i)
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.go", i)), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func median(ds []time.Duration) time.Duration { return percentile(ds, 50) }

// wsTimed runs f n times and returns the median duration. The undo f
// returns runs after the clock stops, then settle (see wsSettle), so that
// no run pays for the writeback and discards of the one before.
func wsTimed(n int, settle func(), f func(i int) (undo func(), err error)) (time.Duration, error) {
	var ds []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		undo, err := f(i)
		d := time.Since(start)
		if undo != nil {
			undo()
		}
		settle()
		if err != nil {
			return 0, err
		}
		ds = append(ds, d)
	}
	return median(ds), nil
}

// wsWorktreeMedian times `git worktree add` of repo (each removed again).
func wsWorktreeMedian(ctx context.Context, repo, tmp string, n int, settle func()) (time.Duration, error) {
	return wsWorktreeTimed(ctx, repo, tmp, n, false, settle)
}

// wsWorktreeTimed is wsWorktreeMedian, with durable adding a syncfs of the
// worktree's filesystem to the time: what cilo's first env pays to make
// its base durable, so the two can be compared at equal durability.
func wsWorktreeTimed(ctx context.Context, repo, tmp string, n int, durable bool, settle func()) (time.Duration, error) {
	return wsTimed(n, settle, func(i int) (func(), error) {
		wt := filepath.Join(tmp, fmt.Sprintf("wt-%d", i))
		undo := func() { wsShell(ctx, repo, "git", "worktree", "remove", "--force", wt) }
		if err := wsShell(ctx, repo, "git", "worktree", "add", "-q", "--detach", wt, "HEAD"); err != nil {
			return undo, err
		}
		if durable {
			fd, err := unix.Open(wt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return undo, err
			}
			defer unix.Close(fd)
			if err := unix.Syncfs(fd); err != nil {
				return undo, fmt.Errorf("syncfs %s: %w", wt, err)
			}
		}
		return undo, nil
	})
}

// wsManager is a fresh overlayfs root whose workspaces are all removed by
// the returned cleanup (which stops their watchers). Its sources get
// watchers as `cilo create` gives them: the binary under test's hidden
// workspace-watch command.
func wsManager(env *Env, root string) (*overlayfs.Manager, func(), error) {
	m, err := overlayfs.New(root, overlayfs.WithWatcher(func() *exec.Cmd { return exec.Command(env.Cilo, "workspace-watch") }))
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() {
		ctx := context.Background()
		if ws, err := m.List(ctx); err == nil {
			for _, w := range ws {
				m.Remove(ctx, w.ID)
			}
		}
		os.RemoveAll(root)
	}
	return m, cleanup, nil
}

// wsFirstEnv times the first env of a repository (a whole base snapshot
// plus the mount) against `git worktree add` and `cp -a` of the same tree.
// The time is Create's, which returns before the base is on disk (the
// source's watcher flushes it); each run waits for that flush after the
// clock stops, so it never lands in the next run.
func wsFirstEnv(ctx context.Context, env *Env, repo, fsName string, settle func()) ([]Row, error) {
	m, cleanup, err := wsManager(env, filepath.Join(filepath.Dir(repo), "ws-first-"+fsName))
	if err != nil {
		return nil, err
	}
	defer cleanup()
	var mode overlayfs.Mode
	var flush []time.Duration
	cilo, err := wsTimed(wsFirstRuns, settle, func(i int) (func(), error) {
		id := fmt.Sprintf("first-%d", i)
		ws, err := m.Create(ctx, id, repo, overlayfs.CreateOptions{})
		if err != nil {
			return nil, err
		}
		created := time.Now()
		mode = ws.Mode
		return func() {
			if err := m.WaitDurable(ctx, id); err != nil {
				env.Logf("first env %s: %v", id, err)
			}
			flush = append(flush, time.Since(created))
			// Removing the only env collects its base: the next run is a
			// first env again.
			m.Remove(ctx, id)
		}, nil
	})
	if err != nil {
		return nil, err
	}
	wt, err := wsWorktreeMedian(ctx, repo, filepath.Dir(repo), wsFirstRuns, settle)
	if err != nil {
		return nil, err
	}
	// The durable anchor only where the goal is: on ext4 its deletions
	// would add to the discards that slow the figures after it.
	var wtSync time.Duration
	if fsName != "ext4" {
		if wtSync, err = wsWorktreeTimed(ctx, repo, filepath.Dir(repo), wsFirstRuns, true, settle); err != nil {
			return nil, err
		}
	}
	cp, err := wsTimed(wsFirstRuns, settle, func(i int) (func(), error) {
		dst := filepath.Join(filepath.Dir(repo), fmt.Sprintf("cp-%d", i))
		return func() { os.RemoveAll(dst) }, wsShell(ctx, "", "cp", "-a", repo, dst)
	})
	if err != nil {
		return nil, err
	}
	env.Logf("first env on %s (%s): %v (base on disk %v after Create returned); git worktree add %v (with a syncfs: %v); cp -a %v",
		fsName, mode, cilo, flush, wt, wtSync, cp)
	// The base is an EROFS image either way; its file data is reflinked
	// where the filesystem can, copied otherwise.
	how := "image, data copied"
	goal := "report (no reflink on " + fsName + ")"
	met := true
	if fsName != "ext4" {
		how = "image, reflink"
		goal = "ratio <= 0.20 (5x faster)"
		met = ms(cilo) <= 0.2*ms(wt)
	}
	metric := fmt.Sprintf("first env, %s, %s (Create)", how, fsName)
	rows := []Row{{Metric: metric, Unit: "ms", Cilo: ms(cilo), AnchorName: "git worktree add", Anchor: ms(wt), Goal: goal, Met: met}}
	if wtSync > 0 {
		// Neither Create nor git waits for the disk; this row shows what
		// git pays when it does.
		rows = append(rows, Row{Metric: metric, Unit: "ms", Cilo: ms(cilo), AnchorName: "git worktree add + syncfs",
			Anchor: ms(wtSync), Goal: "report", Met: true})
	}
	return append(rows, Row{Metric: metric, Unit: "ms", Cilo: ms(cilo), AnchorName: "cp -a", Anchor: ms(cp),
		Goal: "report", Met: true}), nil
}

// wsReflinkFirstEnv repeats the first-env figure on a loop-mounted XFS with
// reflink, holding its own copy of the fixture.
func wsReflinkFirstEnv(ctx context.Context, env *Env, tmp, fixture string) ([]Row, error) {
	mnt := filepath.Join(tmp, "xfs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return nil, err
	}
	x, err := loopfs.Mount(ctx, filepath.Join(tmp, "xfs.img"), 4<<30, "xfs", []string{"-q", "-m", "reflink=1"}, mnt)
	if err != nil {
		return nil, fmt.Errorf("xfs image: %w", err)
	}
	defer func() {
		if err := x.Close(); err != nil {
			env.Logf("xfs image: %v", err)
		}
	}()
	repo := filepath.Join(mnt, "gosrc")
	if err := wsShell(ctx, "", "cp", "-a", fixture, repo); err != nil {
		return nil, err
	}
	defer os.RemoveAll(repo)
	settle := func() { wsSettle(ctx, env, mnt) }
	settle()
	return wsFirstEnv(ctx, env, repo, "xfs", settle)
}

// wsRepo is a source repository with its name in the figures.
type wsRepo struct{ name, dir string }

// wsFurther times further envs of one source state at several repository
// sizes: the base exists and the source's watcher (started by the seed)
// vouches for it, so an env is a question to the watcher and a mount. The
// sizes take turns, run by run, so that whatever slows the machine for a
// while (here: ext4 discards after the fixtures' deletions, which the
// creates' fsyncs wait for) weighs on all of them alike and the figures
// show how cost follows size.
func wsFurther(ctx context.Context, env *Env, tmp string, settle func(), repos []wsRepo) ([]Row, error) {
	m, cleanup, err := wsManager(env, filepath.Join(tmp, "ws-further"))
	if err != nil {
		return nil, err
	}
	defer cleanup()
	for i, r := range repos {
		if _, err := m.Create(ctx, fmt.Sprintf("seed-%d", i), r.dir, overlayfs.CreateOptions{}); err != nil {
			return nil, err
		}
		if err := m.WaitDurable(ctx, fmt.Sprintf("seed-%d", i)); err != nil {
			return nil, err
		}
	}
	settle()
	ds := make([][]time.Duration, len(repos))
	for run := 0; run < wsFurtherRuns; run++ {
		for i, r := range repos {
			start := time.Now()
			if _, err := m.Create(ctx, fmt.Sprintf("further-%d-%d", i, run), r.dir, overlayfs.CreateOptions{}); err != nil {
				return nil, err
			}
			ds[i] = append(ds[i], time.Since(start))
		}
	}
	var rows []Row
	for i, r := range repos {
		wt, err := wsWorktreeMedian(ctx, r.dir, tmp, wsFirstRuns, settle)
		if err != nil {
			return nil, err
		}
		cilo := median(ds[i])
		env.Logf("further env, %s: %v; git worktree add %v", r.name, cilo, wt)
		rows = append(rows, Row{Metric: "further env of one state, " + r.name, Unit: "ms", Cilo: ms(cilo),
			AnchorName: "git worktree add", Anchor: ms(wt), Goal: "<= 50 ms, flat in size", Met: ms(cilo) <= 50})
	}
	return rows, nil
}

// wsAfterEdit times an env made after the user edited 3 files of the
// source: the watcher names the 3 files, a thin layer of them goes over
// the previous base, then the mount.
func wsAfterEdit(ctx context.Context, env *Env, tmp, repo string, wt time.Duration, settle func()) (Row, error) {
	m, cleanup, err := wsManager(env, filepath.Join(tmp, "ws-edit"))
	if err != nil {
		return Row{}, err
	}
	defer cleanup()
	if _, err := m.Create(ctx, "seed", repo, overlayfs.CreateOptions{}); err != nil {
		return Row{}, err
	}
	if err := m.WaitDurable(ctx, "seed"); err != nil {
		return Row{}, err
	}
	settle()
	targets := []string{"fmt/print.go", "net/http/server.go", "os/file.go"}
	originals := map[string][]byte{}
	for _, t := range targets {
		b, err := os.ReadFile(filepath.Join(repo, t))
		if err != nil {
			return Row{}, err
		}
		originals[t] = b
	}
	defer func() {
		for t, b := range originals {
			os.WriteFile(filepath.Join(repo, t), b, 0o644)
		}
	}()
	var ds []time.Duration
	for i := 0; i < wsEditRuns; i++ {
		for _, t := range targets {
			f, err := os.OpenFile(filepath.Join(repo, t), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return Row{}, err
			}
			fmt.Fprintf(f, "// edit %d\n", i)
			f.Close()
		}
		start := time.Now()
		ws, err := m.Create(ctx, fmt.Sprintf("edit-%d", i), repo, overlayfs.CreateOptions{})
		if err != nil {
			return Row{}, err
		}
		ds = append(ds, time.Since(start))
		if len(ws.Layers) < 2 {
			return Row{}, fmt.Errorf("env after an edit has %d layers: no thin layer was made", len(ws.Layers))
		}
		// The layer's flush (the watcher's) stays out of the next run.
		if err := m.WaitDurable(ctx, ws.ID); err != nil {
			return Row{}, err
		}
	}
	d := median(ds)
	env.Logf("env after editing 3 files: %v (thin layer); git worktree add %v", d, wt)
	return Row{Metric: "env after editing 3 files (Go src)", Unit: "ms", Cilo: ms(d),
		AnchorName: "git worktree add", Anchor: ms(wt), Goal: "<= 200 ms", Met: ms(d) <= 200}, nil
}

// wsDisk measures what 10 envs of the fixture add on disk (their upper
// layers and metadata) against 10 worktrees.
func wsDisk(ctx context.Context, env *Env, tmp, repo string) (Row, error) {
	root := filepath.Join(tmp, "ws-disk")
	m, cleanup, err := wsManager(env, root)
	if err != nil {
		return Row{}, err
	}
	defer cleanup()
	for i := 0; i < 10; i++ {
		if _, err := m.Create(ctx, fmt.Sprintf("disk-%d", i), repo, overlayfs.CreateOptions{}); err != nil {
			return Row{}, err
		}
	}
	var used int64
	for i := 0; i < 10; i++ {
		dir := filepath.Join(root, "w", fmt.Sprintf("disk-%d", i))
		for _, sub := range []string{"o", "meta.json"} {
			n, err := wsDiskUsage(filepath.Join(dir, sub))
			if err != nil {
				return Row{}, err
			}
			used += n
		}
	}
	wt := filepath.Join(tmp, "wt-disk")
	if err := wsShell(ctx, repo, "git", "worktree", "add", "-q", "--detach", wt, "HEAD"); err != nil {
		return Row{}, err
	}
	one, err := wsDiskUsage(wt)
	wsShell(ctx, repo, "git", "worktree", "remove", "--force", wt)
	if err != nil {
		return Row{}, err
	}
	mb := func(n int64) float64 { return float64(n) / (1 << 20) }
	env.Logf("disk of 10 envs: %.3f MB; 10 worktrees: %.0f MB", mb(used), mb(10*one))
	return Row{Metric: "disk used by 10 envs, before any edit", Unit: "MB", Cilo: mb(used),
		AnchorName: "10 x git worktree add", Anchor: mb(10 * one), Goal: "< 1 MB", Met: mb(used) < 1}, nil
}

// wsDiskUsage is du: allocated blocks of everything below p.
func wsDiskUsage(p string) (int64, error) {
	var total int64
	err := filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(q, &st); err != nil {
			return err
		}
		total += st.Blocks * 512
		return nil
	})
	return total, err
}

// Settling: between phases and runs the bench flushes the filesystems it
// wrote (syncfs) and then waits until no block device has written,
// discarded or had I/O in flight for wsQuiet. On this VM's ext4, mounted
// with discard, deleting a fixture queues discards that slow every fsync
// for seconds after; without this wait a row measured the disk's backlog
// of the row before it. It is bounded (wsSettleMax) so that another
// program's steady I/O cannot stall the bench; the log says when it was
// not quiet.
const (
	wsQuiet     = 300 * time.Millisecond
	wsSettleMax = 60 * time.Second
)

func wsSettle(ctx context.Context, env *Env, dirs ...string) {
	start := time.Now()
	for _, d := range dirs {
		if fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			unix.Syncfs(fd)
			unix.Close(fd)
		}
	}
	last, quietSince := wsDiskActivity(), time.Now()
	for time.Since(quietSince) < wsQuiet {
		if time.Since(start) > wsSettleMax || ctx.Err() != nil {
			env.Logf("settle: disks still busy after %v", time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(50 * time.Millisecond)
		if a := wsDiskActivity(); a != last {
			last, quietSince = a, time.Now()
		}
	}
	if d := time.Since(start); d > 2*wsQuiet {
		env.Logf("settle: disks quiet after %v", d.Round(time.Millisecond))
	}
}

// wsDiskActivity sums, over every block device, writes and discards
// completed and I/Os in flight (/proc/diskstats); "" when unreadable.
func wsDiskActivity() string {
	b, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		return ""
	}
	var writes, discards, inflight uint64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 15 {
			continue
		}
		var v [3]uint64
		for i, col := range []int{7, 11, 14} {
			fmt.Sscan(f[col], &v[i])
		}
		writes += v[0]
		inflight += v[1]
		discards += v[2]
	}
	return fmt.Sprint(writes, discards, inflight)
}
