package state

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Rereader reads the whole state again and again, as the DNS server does
// after every change, parsing only the records that changed since its
// last read. With 250 envs a full read parses 250 records; during a wave
// of creates that cost the server more CPU than the creates it served.
//
// A record is only ever replaced by renaming a new file over it, so a
// record whose inode, size, modification and change times are those seen
// before is the record read before. A Rereader is not safe for concurrent
// use, and the envs it returns are shared between reads: callers must not
// change them.
type Rereader struct {
	store  *Store
	known  map[string]seenRecord // by file name
	parsed int                   // records parsed in all, for tests
}

type seenRecord struct {
	stamp recordStamp
	env   *Env
}

type recordStamp struct {
	ino, size        uint64
	mtimeNs, ctimeNs int64
}

// Rereader returns a Rereader of s that has read nothing yet.
func (s *Store) Rereader() *Rereader {
	return &Rereader{store: s, known: map[string]seenRecord{}}
}

// Read returns every env, as [Store.Read] does.
func (r *Rereader) Read(ctx context.Context) (*State, error) {
	dir := r.store.EnvsDir()
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	st := &State{Envs: make(map[string]*Env, len(names))}
	seen := make(map[string]seenRecord, len(names))
	for _, name := range names {
		if !IsRecord(name) {
			continue
		}
		var fst unix.Stat_t
		if err := unix.Fstatat(int(d.Fd()), name, &fst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // destroyed since the listing
			}
			return nil, fmt.Errorf("read state: stat record %s: %w", name, err)
		}
		stamp := recordStamp{ino: fst.Ino, size: uint64(fst.Size), mtimeNs: fst.Mtim.Nano(), ctimeNs: fst.Ctim.Nano()}
		rec, ok := r.known[name]
		if !ok || rec.stamp != stamp {
			e, _, err := readRecord(filepath.Join(dir, name))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			r.parsed++
			// The stamp is the one taken before the read: a record
			// replaced in between is read again next time.
			rec = seenRecord{stamp: stamp, env: e}
		}
		seen[name] = rec
		st.Envs[rec.env.Key()] = rec.env
	}
	r.known = seen
	return st, nil
}
