package overlayfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A base is written without waiting for the disk: the flush of a first
// env's image (tens of MB copied into it) would cost Create more than
// writing it did. Its metadata names the boot that wrote it while it is
// not yet known durable (metadata lost to a crash, or left empty, counts
// as that mark); once a syncfs
// after the Create has flushed it, the mark is taken off. A base still
// marked from an earlier boot may have been torn by the crash that ended
// that boot: it is never used again for a new env, and an env on it
// cannot be mounted again (ErrTornBase). Within the boot that wrote it, an
// unflushed base reads back exactly as written (the page cache is
// coherent), so it is used as any other.

// ErrTornBase is returned (wrapped) when a workspace's base was written in
// an earlier boot and was not known to be on disk when that boot ended:
// its image may be torn. The workspace must be removed and made again.
var ErrTornBase = errors.New("its image may be torn")

// bootIDFile names the current boot; it changes at every boot.
const bootIDFile = "/proc/sys/kernel/random/boot_id"

func readBootID() (string, error) {
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("read boot id: %s is empty", bootIDFile)
	}
	return id, nil
}

// torn reports whether base b was written in an earlier boot and never
// marked durable. When the boot id cannot be read, every undurable base
// counts as torn: safe, and a Manager that cannot read it writes none.
func (m *Manager) torn(b *baseMeta) bool {
	if b.PendingBoot == "" {
		return false
	}
	boot, err := m.bootID()
	return err != nil || boot != b.PendingBoot
}

// stackOf reads the base workspace w stands on. It returns ErrTornBase,
// with what to do about it, when any layer of that base is torn, or has
// metadata that cannot be read: a base's metadata is written without a
// flush of its own, so a crash right after the Create can leave it empty
// or missing, which means the same.
func (m *Manager) stackOf(w *wsMeta) (*baseMeta, error) {
	b, err := m.readBase(w.Base)
	if err != nil {
		return nil, m.tornErr(w, w.Base, fmt.Sprintf("cannot be read (%v)", err))
	}
	for _, id := range b.Layers {
		l := b
		if id != b.ID {
			if l, err = m.readBase(id); err != nil {
				return nil, m.tornErr(w, id, fmt.Sprintf("cannot be read (%v)", err))
			}
		}
		if m.torn(l) {
			return nil, m.tornErr(w, id, fmt.Sprintf("was written in an earlier boot (%s)", l.PendingBoot))
		}
	}
	return b, nil
}

func (m *Manager) tornErr(w *wsMeta, base, what string) error {
	keep := w.Upper
	if w.Mode != ModeOverlay {
		keep = w.Path
	}
	return fmt.Errorf("workspace %q: base %s %s and the machine may have gone down before it was known to be on disk: %w; "+
		"the env's own changes are in %s (copy out what you need), then destroy the env (cilo destroy <env>) and create it again",
		w.ID, base, what, ErrTornBase, keep)
}

// markDurable flushes the filesystem of the root, then marks base id and
// every layer below it durable, bottom first, each by an atomic rewrite of
// its metadata. A base collected meanwhile is skipped: syncing one being
// deleted is harmless, and nothing of it is written again.
func (m *Manager) markDurable(ctx context.Context, id string) error {
	// Every base lives under root/b, on one filesystem: one syncfs flushes
	// the base and its layers (and anything else dirty there).
	if err := syncFS(m.root); err != nil {
		return fmt.Errorf("make base %s durable: %w", id, err)
	}
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	b, err := m.readBase(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil // collected
	}
	if err != nil {
		return fmt.Errorf("make base %s durable: %w", id, err)
	}
	stack := slices.Clone(b.Layers)
	slices.Reverse(stack)
	for _, l := range stack {
		lb := b
		if l != id {
			if lb, err = m.readBase(l); errors.Is(err, os.ErrNotExist) {
				continue
			} else if err != nil {
				return fmt.Errorf("make base %s durable: %w", l, err)
			}
		}
		if lb.PendingBoot == "" {
			continue
		}
		if boot, err := m.bootID(); err != nil || boot != lb.PendingBoot {
			// Written before a reboot: flushing it now proves nothing
			// about what reached the disk then.
			return fmt.Errorf("make base %s durable: %w", l, ErrTornBase)
		}
		lb.PendingBoot = ""
		if err := m.writeBaseDurable(lb); err != nil {
			return err
		}
	}
	return nil
}

// writeBaseDurable rewrites base b's metadata atomically and durably:
// temp file, fsync, rename, fsync of the directory.
func (m *Manager) writeBaseDurable(b *baseMeta) error {
	dir := m.baseDir(b.ID)
	if err := writeJSON(filepath.Join(dir, "meta.json"), b, true); err != nil {
		return fmt.Errorf("mark base %s durable: %w", b.ID, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("mark base %s durable: %w", b.ID, err)
	}
	return nil
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// syncLater has base b flushed and marked durable after the Create that
// made or found it, without making that Create wait: the source's watcher
// does it when one answers (key is its key; a watcher just started was
// already told in its handoff), else a short detached process started as
// watchers are. A Manager without WithWatcher has no process to ask and
// syncs inline. A lost request costs nothing in safety: the base stays
// marked, is used as any other until the next boot, and not after.
func (m *Manager) syncLater(ctx context.Context, key string, b *baseMeta) error {
	if m.opts.watcher == nil {
		return m.markDurable(ctx, b.ID)
	}
	if key != "" {
		if _, err := m.askWatcher(ctx, key, watchRequest{Op: "sync", Base: b.ID}); err == nil {
			return nil
		}
	}
	if err := m.startSyncer(b.ID); err != nil {
		m.logf("base %s: %v; it is flushed by the next create of it", b.ID, err)
	}
	return nil
}

// startSyncer starts a detached process (the watcher command, in its sync
// mode) that flushes base id, marks it durable and exits.
func (m *Manager) startSyncer(id string) error {
	cmd, err := m.spawnWatchCmd("syncer", watchHandoff{Root: m.root, Sync: []string{id}})
	if err != nil {
		return err
	}
	go cmd.Wait() // reaps it in a long-lived caller
	return nil
}

// runSyncer is the body of a watcher process started only to flush bases
// (startSyncer).
func runSyncer(ctx context.Context, h watchHandoff, logf func(string, ...any)) error {
	m := &Manager{root: h.Root, bootID: readBootID}
	var errs []error
	for _, id := range h.Sync {
		start := time.Now()
		if err := m.markDurable(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		logf("base %s: on disk after %s", id, time.Since(start).Round(time.Millisecond))
	}
	return errors.Join(errs...)
}

// Unflushed lists the bases written in this boot that are still not known
// to be on disk more than grace after they were made: their flush was
// asked for after the Create and should be long done, so the process
// that was to do it died or was never started. Until they are flushed, a
// crash makes every env on them unusable (see ErrTornBase); Flush mends
// that.
func (m *Manager) Unflushed(ctx context.Context, grace time.Duration) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(m.root, dirBases))
	if err != nil {
		return nil, fmt.Errorf("list bases: %w", err)
	}
	var out []string
	for _, e := range ents {
		b, err := m.readBase(e.Name())
		if err != nil || b.PendingBoot == "" || m.torn(b) || time.Since(b.Created) < grace {
			continue // unreadable or torn metadata is stackOf's to report
		}
		out = append(out, b.ID)
	}
	return out, nil
}

// Flush flushes base id (and the layers below it) now and marks it
// durable: what its lost flush would have done.
func (m *Manager) Flush(ctx context.Context, id string) error {
	if validID(id) != nil { // base ids are made of the same characters
		return fmt.Errorf("flush base %q: not a base id", id)
	}
	return m.markDurable(ctx, id)
}

// WaitDurable waits until the base of workspace id (and every layer below
// it) is known to be on disk, which happens shortly after Create returns.
// Benchmarks use it to keep one run's flush out of the next run's time.
func (m *Manager) WaitDurable(ctx context.Context, id string) error {
	w, err := m.readWS(id)
	if err != nil {
		return err
	}
	for {
		b, err := m.readBase(w.Base)
		if err != nil {
			return fmt.Errorf("workspace %q: base: %w", id, err)
		}
		// Marked durable means the whole stack is (markDurable marks
		// bottom up).
		if b.PendingBoot == "" {
			return nil
		}
		if m.torn(b) {
			_, err := m.stackOf(w)
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
