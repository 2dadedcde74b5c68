// Package parsed keeps what cilo-core decoded from each YAML config file,
// so that the front (cmd/cilo) can read the same config without linking a
// YAML parser: the parser's package initialisation alone costs about a
// fifth of a millisecond on every start, a tenth of what `ip netns exec`
// takes in all.
//
// An entry is keyed by everything its result depends on: the file's path,
// its exact bytes, the type decoded into and that value's fields before
// decoding (the defaults). A changed file, or a cilo with other defaults,
// simply misses, and the front hands the command to cilo-core, which
// decodes the file and keeps the result for the next start.
package parsed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
)

// ErrMiss means no entry matches the file as it is now.
var ErrMiss = errors.New("config file not decoded before")

// format changes whenever entries change shape.
const format = 1

// Cache is a directory of entries, one small JSON file each.
type Cache struct{ dir string }

// New returns the cache kept in dir, which need not exist yet.
func New(dir string) Cache { return Cache{dir: dir} }

type entry struct {
	Format int             `json:"format"`
	File   string          `json:"file"`
	Type   string          `json:"type"`
	Start  json.RawMessage `json:"start"`
	Source string          `json:"source"`
	Value  json.RawMessage `json:"value"`
}

// key describes one decoding: of b, read from file, into v as v is now.
func key(file string, b []byte, v any) (entry, string, error) {
	start, err := json.Marshal(v)
	if err != nil {
		return entry{}, "", fmt.Errorf("encode defaults for %s: %w", file, err)
	}
	e := entry{Format: format, File: file, Type: fmt.Sprintf("%T", v), Start: start, Source: string(b)}
	return e, filePrefix(file) + hash([]byte{format}, []byte(e.Type), start, b) + ".json", nil
}

// filePrefix starts the name of every entry of file, so that keeping a
// new one can drop the file's older ones.
func filePrefix(file string) string { return hash([]byte(file)) + "-" }

func hash(parts ...[]byte) string {
	h := fnv.New64a()
	for _, part := range parts {
		h.Write(strconv.AppendInt(nil, int64(len(part)), 10))
		h.Write(part)
	}
	return strconv.FormatUint(h.Sum64(), 16)
}

// Decode fills v with what was kept for b, read from file, decoded into a
// value equal to v. It returns ErrMiss when there is no such entry.
func (c Cache) Decode(file string, b []byte, v any) error {
	want, name, err := key(file, b, v)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(c.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return ErrMiss
	}
	if err != nil {
		return fmt.Errorf("read decoded %s: %w", file, err)
	}
	var got entry
	if err := json.Unmarshal(raw, &got); err != nil {
		return ErrMiss
	}
	// The name is only a hash: the entry itself must match.
	if got.Format != want.Format || got.File != want.File || got.Type != want.Type ||
		!bytes.Equal(got.Start, want.Start) || got.Source != want.Source {
		return ErrMiss
	}
	if err := json.Unmarshal(got.Value, v); err != nil {
		return fmt.Errorf("read decoded %s: %w", file, err)
	}
	return nil
}

// DecodeAndKeep decodes b, read from file, into v with decode, then keeps
// the result for Decode. Keeping is best effort: a cache that cannot be
// written (a read-only or unprivileged run) costs the front its shortcut,
// never the caller its config.
func (c Cache) DecodeAndKeep(file string, b []byte, v any, decode func([]byte, any) error) error {
	e, name, err := key(file, b, v)
	if err != nil {
		return err
	}
	if err := decode(b, v); err != nil {
		return err
	}
	path := filepath.Join(c.dir, name)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if e.Value, err = json.Marshal(v); err != nil {
		return nil
	}
	if c.write(path, e) == nil {
		c.dropOthers(file, path)
	}
	return nil
}

// dropOthers removes file's entries other than keep: one entry per file
// is enough, and a file edited all day must not fill the run directory.
func (c Cache) dropOthers(file, keep string) {
	old, _ := filepath.Glob(filepath.Join(c.dir, filePrefix(file)+"*.json"))
	for _, p := range old {
		if p != keep {
			os.Remove(p)
		}
	}
}

// write puts an entry in place whole, so Decode never reads half of one.
func (c Cache) write(path string, e entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(c.dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
