package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	envsDir   = "envs"       // one record per env: <project>.<name>.json
	claimsDir = "index"      // one symlink per pool index, to the record holding it
	lockName  = "state.lock" // flock around replacing or removing a record
	v1File    = "state.json" // schema 1: every env in one file
)

// Store is the state in one directory: a record file per env, so that a
// change costs the same with 250 envs as with one. It is safe for
// concurrent use by goroutines and by separate processes: creating a
// record needs no lock (links and claims fail when taken), and replacing
// or removing one takes an exclusive flock on a lock file beside the
// records only for a compare and a rename or unlink.
type Store struct {
	dir string
}

// Open returns the store in dir, creating it if needed and converting a
// schema 1 state file.
func Open(dir string) (*Store, error) {
	for _, d := range []string{dir, filepath.Join(dir, envsDir), filepath.Join(dir, claimsDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create state directory %s: %w", d, err)
		}
	}
	s := &Store{dir: dir}
	if err := s.migrateV1(context.Background()); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir is the directory holding the state.
func (s *Store) Dir() string { return s.dir }

// EnvsDir holds the env records; a change to any env is a rename or an
// unlink of a file in it (watchers use it).
func (s *Store) EnvsDir() string { return filepath.Join(s.dir, envsDir) }

// IsRecord reports whether name, a file in EnvsDir, is an env record
// rather than a temporary file.
func IsRecord(name string) bool {
	return strings.HasSuffix(name, ".json") && !strings.HasPrefix(name, ".")
}

// record is the file of one env.
type record struct {
	Version int  `json:"version"`
	Env     *Env `json:"env"`
}

// Read returns every env without taking the lock: records are only ever
// replaced by rename, so a reader sees either the old or the new one.
func (s *Store) Read(ctx context.Context) (*State, error) {
	ents, err := os.ReadDir(s.EnvsDir())
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	st := &State{Envs: make(map[string]*Env, len(ents))}
	for _, de := range ents {
		if !IsRecord(de.Name()) {
			continue
		}
		e, _, err := readRecord(filepath.Join(s.EnvsDir(), de.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // destroyed since the listing
		}
		if err != nil {
			return nil, err
		}
		st.Envs[e.Key()] = e
	}
	return st, nil
}

// Get returns the env of key, reading only its record.
func (s *Store) Get(ctx context.Context, key string) (*Env, error) {
	p, err := s.recordPath(key)
	if err != nil {
		return nil, err
	}
	e, _, err := readRecord(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("env %s: %w", key, ErrNotFound)
	}
	return e, err
}

// Insert adds the env that build returns for key. build is told which
// pool indexes live envs hold; the env it returns claims its index until
// Delete. Insert fails with ErrExists when key has a record.
//
// It takes no lock: the index is claimed by creating its claim (a second
// claimer of the same index fails and picks again) and the record by
// linking it into place (a second creator of the same env fails). So
// parallel creates share nothing but the directory, and their fsyncs
// share the filesystem journal's commits.
func (s *Store) Insert(ctx context.Context, key string, build func(used func(int) bool) (*Env, error)) (*Env, error) {
	p, err := s.recordPath(key)
	if err != nil {
		return nil, err
	}
	if err := s.absent(p, key); err != nil {
		return nil, err
	}
	used, err := s.claims()
	if err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("insert env %s: %w", key, err)
		}
		e, err := build(func(i int) bool { return used[i] })
		if err != nil {
			return nil, err
		}
		if e.Key() != key {
			return nil, fmt.Errorf("insert env %s: record is for %s", key, e.Key())
		}
		err = s.put(p, e)
		if errors.Is(err, errClaimed) {
			// Another create took the index meanwhile. Parallel creates
			// all choose the same lowest index, so each loses many times:
			// a loss costs the failed claim, not a new read of them all.
			used[e.Index] = true
			continue
		}
		if errors.Is(err, fs.ErrExist) {
			return nil, s.absent(p, key)
		}
		if err != nil {
			return nil, err
		}
		return e, nil
	}
}

// absent returns ErrExists, with the env's status, when key has a record.
func (s *Store) absent(p, key string) error {
	old, _, err := readRecord(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("env %s (%s): %w", key, old.Status, ErrExists)
}

// errClaimed is put's answer when e's index was claimed first by another.
var errClaimed = errors.New("pool index claimed")

// put claims e's index and creates its record. The claim is made durable
// first: a crash in between leaves a claim without a record, which only
// holds an index until PruneClaims, never a record without a claim, whose
// index could be given twice. It fails with fs.ErrExist when the record
// exists.
func (s *Store) put(p string, e *Env) error {
	claim := s.claimPath(e.Index)
	if err := os.Symlink(filepath.Base(p), claim); errors.Is(err, fs.ErrExist) {
		return errClaimed
	} else if err != nil {
		return fmt.Errorf("claim pool index %d for env %s: %w", e.Index, e.Key(), err)
	}
	err := syncDir(filepath.Dir(claim))
	if err == nil {
		err = s.create(p, e)
	}
	if err != nil {
		os.Remove(claim)
		return err
	}
	return nil
}

// Update runs fn on the env of key and writes the result if fn returns
// nil. The new record is written and synced before the lock is taken; the
// lock only covers checking that the record is still the one fn saw and
// renaming the new one over it. When it is not, fn runs again on the
// newer record. fn must not block on other cilo processes.
func (s *Store) Update(ctx context.Context, key string, fn func(*Env) error) (*Env, error) {
	p, err := s.recordPath(key)
	if err != nil {
		return nil, err
	}
	for {
		e, seen, err := readRecord(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("env %s: %w", key, ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		index := e.Index
		if err := fn(e); err != nil {
			return nil, err
		}
		if e.Key() != key || e.Index != index {
			return nil, fmt.Errorf("update env %s: its key and pool index cannot change", key)
		}
		tmp, err := s.writeTemp(e)
		if err != nil {
			return nil, err
		}
		swapped, err := s.swap(ctx, p, seen, tmp)
		if err != nil || !swapped {
			os.Remove(tmp)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("env %s: %w", key, ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		if swapped {
			return e, syncDir(s.EnvsDir())
		}
	}
}

// swap renames tmp over the record at p if p still holds seen.
func (s *Store) swap(ctx context.Context, p string, seen []byte, tmp string) (bool, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	now, err := os.ReadFile(p)
	if err != nil {
		return false, err
	}
	if !bytes.Equal(now, seen) {
		return false, nil
	}
	if err := os.Rename(tmp, p); err != nil {
		return false, fmt.Errorf("replace state record %s: %w", p, err)
	}
	return true, nil
}

// Delete removes the env of key and releases its index; a missing record
// is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.recordPath(key)
	if err != nil {
		return err
	}
	e, err := s.remove(ctx, p)
	if e == nil || err != nil {
		return err
	}
	if err := syncDir(s.EnvsDir()); err != nil {
		return err
	}
	if err := os.Remove(s.claimPath(e.Index)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release pool index %d of env %s: %w", e.Index, key, err)
	}
	return nil
}

// remove unlinks the record at p under the lock, so that no Update renames
// a record back into place, and returns what it held (nil: nothing).
func (s *Store) remove(ctx context.Context, p string) (*Env, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	e, _, err := readRecord(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := os.Remove(p); err != nil {
		return nil, fmt.Errorf("remove state record of env %s: %w", e.Key(), err)
	}
	return e, nil
}

// claims returns the pool indexes claimed, from the names in the claims
// directory alone: one readdir, however many envs there are. A claim left
// without a record by a crash keeps its index until PruneClaims.
func (s *Store) claims() (map[int]bool, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, claimsDir))
	if err != nil {
		return nil, fmt.Errorf("read pool index claims: %w", err)
	}
	used := make(map[int]bool, len(ents))
	for _, de := range ents {
		if i, err := strconv.Atoi(de.Name()); err == nil {
			used[i] = true
		}
	}
	return used, nil
}

// PruneClaims finds the claims whose record is gone, left by a crash
// between the two steps of put or Delete, and with remove releases them.
// It returns their indexes.
func (s *Store) PruneClaims(ctx context.Context, remove bool) ([]int, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	used, err := s.claims()
	if err != nil {
		return nil, err
	}
	var stale []int
	for i := range used {
		target, err := os.Readlink(s.claimPath(i))
		if err != nil {
			return nil, fmt.Errorf("read pool index claim %d: %w", i, err)
		}
		if _, err := os.Lstat(filepath.Join(s.EnvsDir(), filepath.Base(target))); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		stale = append(stale, i)
		if remove {
			if err := os.Remove(s.claimPath(i)); err != nil {
				return stale, fmt.Errorf("release stale pool index claim %d: %w", i, err)
			}
		}
	}
	slices.Sort(stale)
	return stale, nil
}

func (s *Store) claimPath(i int) string {
	return filepath.Join(s.dir, claimsDir, strconv.Itoa(i))
}

// recordPath is the record file of key. Keys come from validated names,
// but the store does not rely on it: nothing but a label may become part
// of a path.
func (s *Store) recordPath(key string) (string, error) {
	project, name, ok := strings.Cut(key, "/")
	if !ok || !isLabel(project) || !isLabel(name) {
		return "", fmt.Errorf("invalid env key %q: want <project>/<env>, each of a-z, 0-9 and '-'", key)
	}
	return filepath.Join(s.EnvsDir(), project+"."+name+".json"), nil
}

func isLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// readRecord parses the record at path; it also returns the bytes, which
// Update compares to tell whether the record changed meanwhile.
func readRecord(path string) (*Env, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("read state record: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.Env == nil {
		if err == nil {
			err = errors.New("no env in it")
		}
		return nil, nil, fmt.Errorf("parse state record %s: %v (move it aside and run cilo doctor --fix)", path, err)
	}
	if r.Version > SchemaVersion {
		return nil, nil, fmt.Errorf("state record %s has schema version %d, this cilo knows up to %d: upgrade cilo", path, r.Version, SchemaVersion)
	}
	if want := r.Env.Project + "." + r.Env.Name + ".json"; filepath.Base(path) != want {
		return nil, nil, fmt.Errorf("state record %s holds env %s (move it aside and run cilo doctor --fix)", path, r.Env.Key())
	}
	return r.Env, b, nil
}

// writeTemp writes e's record to a new synced temp file beside the
// records. Its name starts with a dot, which IsRecord rejects.
func (s *Store) writeTemp(e *Env) (string, error) {
	b, err := json.Marshal(record{Version: SchemaVersion, Env: e})
	if err != nil {
		return "", fmt.Errorf("encode state of env %s: %w", e.Key(), err)
	}
	tmp, err := os.CreateTemp(s.EnvsDir(), ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write state of env %s: %w", e.Key(), err)
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write state of env %s: %w", e.Key(), err)
	}
	return tmp.Name(), nil
}

// create makes the record at p, failing with fs.ErrExist if there is one:
// a hard link puts the synced temp file into place only where nothing is.
func (s *Store) create(p string, e *Env) error {
	tmp, err := s.writeTemp(e)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("create state record of env %s: %w", e.Key(), err)
	}
	return syncDir(s.EnvsDir())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state directory %s: %w", dir, err)
	}
	return nil
}

// lock takes the exclusive lock. Waiters block in flock, which the kernel
// wakes in turn, rather than polling; ctx abandons the wait.
func (s *Store) lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, lockName), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	fd := int(f.Fd())
	unlock := func() {
		unix.Flock(fd, unix.LOCK_UN)
		f.Close()
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return unlock, nil
	}
	got := make(chan error, 1)
	go func() {
		for {
			err := unix.Flock(fd, unix.LOCK_EX)
			if !errors.Is(err, unix.EINTR) {
				got <- err
				return
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock state: %w", err)
		}
		return unlock, nil
	case <-ctx.Done():
		// The flock call cannot be cancelled: release the lock when it
		// comes, then the file.
		go func() {
			if <-got == nil {
				unix.Flock(fd, unix.LOCK_UN)
			}
			f.Close()
		}()
		return nil, fmt.Errorf("wait for state lock: %w", ctx.Err())
	}
}

// migrateV1 turns a schema 1 state file into records, keeping the old file
// beside them as state.json.v1 for reference.
func (s *Store) migrateV1(ctx context.Context) error {
	old := filepath.Join(s.dir, v1File)
	if _, err := os.Stat(old); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	b, err := os.ReadFile(old)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // another cilo migrated it first
	}
	if err != nil {
		return fmt.Errorf("read schema 1 state file: %w", err)
	}
	var v1 struct {
		Version int             `json:"version"`
		Envs    map[string]*Env `json:"envs"`
	}
	if err := json.Unmarshal(b, &v1); err != nil {
		return fmt.Errorf("parse state file %s: %w (move it aside and run cilo doctor --fix)", old, err)
	}
	if v1.Version != 1 {
		return fmt.Errorf("state file %s has schema version %d, this cilo reads only version 1 files: upgrade cilo", old, v1.Version)
	}
	for key, e := range v1.Envs {
		p, err := s.recordPath(key)
		if err != nil {
			return fmt.Errorf("convert state file %s: %w", old, err)
		}
		if _, err := os.Lstat(p); err == nil {
			continue // converted by an interrupted earlier run
		}
		os.Remove(s.claimPath(e.Index)) // a claim from that run, without its record
		if err := s.put(p, e); err != nil {
			return fmt.Errorf("convert state file %s: %w", old, err)
		}
	}
	if err := os.Rename(old, old+".v1"); err != nil {
		return fmt.Errorf("convert state file %s: %w", old, err)
	}
	return syncDir(s.dir)
}
