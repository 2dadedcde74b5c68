package loopfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches loop devices and mounts")
	}
	tests := []struct {
		name   string
		fstype string
		args   []string
		size   int64
	}{
		{"ext4", "ext4", []string{"-q", "-F"}, 16 << 20},
		{"xfs_reflink", "xfs", []string{"-q", "-m", "reflink=1"}, 512 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := exec.LookPath("mkfs." + tt.fstype); err != nil {
				// scripts/setup.sh installs both, so CI never skips.
				t.Skipf("this machine has no mkfs.%s (scripts/setup.sh installs it)", tt.fstype)
			}
			dir := t.TempDir()
			mnt := filepath.Join(dir, "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(dir, "fs.img")
			fs, err := Mount(context.Background(), img, tt.size, tt.fstype, tt.args, mnt)
			if err != nil {
				t.Fatal(err)
			}
			closed := false
			t.Cleanup(func() {
				if !closed {
					fs.Close()
				}
			})
			if err := os.WriteFile(filepath.Join(mnt, "x"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			mounts, _ := os.ReadFile("/proc/self/mounts")
			if !strings.Contains(string(mounts), fs.Dev+" "+mnt+" "+tt.fstype) {
				t.Errorf("%s not mounted at %s as %s", fs.Dev, mnt, tt.fstype)
			}
			if err := fs.Close(); err != nil {
				t.Fatal(err)
			}
			closed = true
			if _, err := os.Stat(img); !os.IsNotExist(err) {
				t.Errorf("image left after Close: %v", err)
			}
			if _, err := os.Stat(filepath.Join(mnt, "x")); !os.IsNotExist(err) {
				t.Errorf("still mounted after Close: %v", err)
			}
		})
	}
}

func TestMountBadFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches loop devices and mounts")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if _, err := Mount(context.Background(), img, 1<<20, "nosuchfs", nil, dir); err == nil {
		t.Fatal("mount of an unknown filesystem succeeded")
	}
	if _, err := os.Stat(img); !os.IsNotExist(err) {
		t.Errorf("image left after a failed Mount: %v", err)
	}
}
