package erofs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/overlayfs/loopfs"
)

func entryOf(t *testing.T, root, rel string) Entry {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(root, rel), &st); err != nil {
		t.Fatal(err)
	}
	return Entry{Path: rel, Mode: st.Mode, UID: st.Uid, GID: st.Gid, Size: st.Size,
		MtimeSec: st.Mtim.Sec, MtimeNsec: uint32(st.Mtim.Nsec)}
}

// TestWriteFails: a tree the format cannot hold, a file that cannot be
// read, a full disk or a cancelled context is a clear error, and no image
// is left behind.
func TestWriteFails(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, src string) (ctx context.Context, out string, entries []Entry)
		wantErr error
		wantMsg string
	}{
		{"root_not_first", func(t *testing.T, src string) (context.Context, string, []Entry) {
			return context.Background(), "", []Entry{entryOf(t, src, "a.txt"), entryOf(t, src, "")}
		}, ErrFormat, "root"},
		{"hardlink_to_nothing", func(t *testing.T, src string) (context.Context, string, []Entry) {
			e := entryOf(t, src, "a.txt")
			e.Link = "nope"
			return context.Background(), "", []Entry{entryOf(t, src, ""), e}
		}, ErrFormat, "nope"},
		{"name_twice", func(t *testing.T, src string) (context.Context, string, []Entry) {
			return context.Background(), "", []Entry{entryOf(t, src, ""), entryOf(t, src, "a.txt"), entryOf(t, src, "a.txt")}
		}, ErrFormat, "a.txt"},
		{"name_twice_while_cloning", func(t *testing.T, src string) (context.Context, string, []Entry) {
			// The clones start before the layout is planned: the
			// planning's error must stop them and leave nothing.
			return context.Background(), "", []Entry{entryOf(t, src, ""), entryOf(t, src, "big.bin"), entryOf(t, src, "big.bin")}
		}, ErrFormat, "big.bin"},
		{"device", func(t *testing.T, src string) (context.Context, string, []Entry) {
			e := entryOf(t, src, "a.txt")
			e.Mode = unix.S_IFCHR | 0o644
			return context.Background(), "", []Entry{entryOf(t, src, ""), e}
		}, ErrFormat, "a.txt"},
		{"file_gone", func(t *testing.T, src string) (context.Context, string, []Entry) {
			e := entryOf(t, src, "a.txt")
			e.Path = "gone.txt"
			return context.Background(), "", []Entry{entryOf(t, src, ""), e}
		}, os.ErrNotExist, "gone.txt"},
		{"cancelled", func(t *testing.T, src string) (context.Context, string, []Entry) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, "", []Entry{entryOf(t, src, ""), entryOf(t, src, "a.txt"), entryOf(t, src, "big.bin")}
		}, context.Canceled, ""},
		{"disk_full", func(t *testing.T, src string) (context.Context, string, []Entry) {
			if os.Geteuid() != 0 {
				t.Skip("needs root (CAP_SYS_ADMIN) to mount a small filesystem; CI runs as root")
			}
			dir := t.TempDir()
			mnt := filepath.Join(dir, "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			fs, err := loopfs.Mount(context.Background(), filepath.Join(dir, "small.img"), 16<<20, "ext4", []string{"-q", "-F"}, mnt)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := fs.Close(); err != nil {
					t.Error(err)
				}
			})
			return context.Background(), filepath.Join(mnt, "image.erofs"),
				[]Entry{entryOf(t, src, ""), entryOf(t, src, "a.txt"), entryOf(t, src, "big.bin")}
		}, unix.ENOSPC, "big.bin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := t.TempDir()
			if err := os.WriteFile(filepath.Join(src, "a.txt"), []byte("a\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(src, "big.bin"), make([]byte, 32<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, out, entries := tt.setup(t, src)
			if out == "" {
				out = filepath.Join(t.TempDir(), "image.erofs")
			}
			_, err := Write(ctx, out, src, entries, Options{Reflink: true})
			if err == nil {
				t.Fatal("Write succeeded")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v is not %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not name %q", err, tt.wantMsg)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("image left behind: %v", err)
			}
		})
	}
}
