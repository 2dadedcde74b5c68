// Package images builds the container images that cilo's tests and its
// bundled example run: static Go programs (CGO_ENABLED=0), optionally with
// busybox-static for shells and healthchecks, packed as one-layer image
// archives that both `docker save` readers (podman load) and containerd's
// importer understand. Nothing comes from a registry.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// File is one entry of the image's single layer.
type File struct {
	Path    string      // absolute path inside the image
	Source  string      // host file to copy (regular files)
	Data    []byte      // literal content when Source is empty
	Mode    os.FileMode // permission bits; os.ModeDir for directories
	Symlink string      // link target; makes the entry a symlink
}

// Spec describes one image.
type Spec struct {
	Ref          string // e.g. cilo-example-api:latest; normalised like docker does
	Files        []File
	Entrypoint   []string
	Cmd          []string
	Env          []string
	WorkingDir   string
	ExposedPorts []string // "80/tcp"
}

// BuildGo compiles the Go main package pkg (as `go build` names it, run in
// dir) into a static binary at out.
func BuildGo(ctx context.Context, dir, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

// Busybox returns the busybox-static binary as /bin/busybox plus symlinks
// for the applets tests and healthchecks use.
func Busybox() ([]File, error) {
	if _, err := os.Stat(BusyboxPath); err != nil {
		return nil, fmt.Errorf("busybox-static is needed for image shells (apt-get install -y busybox-static): %w", err)
	}
	files := []File{{Path: "/bin/busybox", Source: BusyboxPath, Mode: 0o755}}
	for _, a := range []string{"sh", "cat", "echo", "env", "id", "ls", "sleep", "test", "true", "false", "wget", "nc", "hostname", "ps", "kill", "grep", "touch", "mkdir", "rm", "whoami", "printf", "date"} {
		files = append(files, File{Path: "/bin/" + a, Symlink: "busybox"})
	}
	return files, nil
}

// baseFiles are the directories and files every image gets, so that user
// names resolve and /tmp is writable.
func baseFiles() []File {
	return []File{
		{Path: "/bin", Mode: os.ModeDir | 0o755},
		{Path: "/etc", Mode: os.ModeDir | 0o755},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "/data", Mode: os.ModeDir | 0o777},
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), Mode: 0o644},
		{Path: "/etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n"), Mode: 0o644},
	}
}

// Normalize returns the full reference containerd stores an image under
// (cilo-test -> docker.io/library/cilo-test:latest).
func Normalize(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	return reference.TagNameOnly(named).String(), nil
}

// WriteArchive writes the image as a tar holding both an OCI image layout
// (oci-layout, index.json, blobs) and docker save's manifest.json pointing
// at the same blobs, as `docker save` does since Docker 25.
func WriteArchive(w io.Writer, s Spec) error {
	full, err := Normalize(s.Ref)
	if err != nil {
		return err
	}
	layer, err := layerTar(append(baseFiles(), s.Files...))
	if err != nil {
		return err
	}
	layerDigest := digest(layer)
	exposed := map[string]struct{}{}
	for _, p := range s.ExposedPorts {
		exposed[p] = struct{}{}
	}
	env := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, s.Env...)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC(),
		"config": map[string]any{
			"Entrypoint":   s.Entrypoint,
			"Cmd":          s.Cmd,
			"Env":          env,
			"WorkingDir":   s.WorkingDir,
			"ExposedPorts": exposed,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return fmt.Errorf("encode image config: %w", err)
	}
	configDigest := digest(config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": len(layer)}},
	})
	if err != nil {
		return fmt.Errorf("encode image manifest: %w", err)
	}
	manifestDigest := digest(manifest)
	tagged, _ := reference.ParseNormalizedNamed(full)
	tag := "latest"
	if t, ok := tagged.(reference.Tagged); ok {
		tag = t.Tag()
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    manifestDigest,
			"size":      len(manifest),
			"annotations": map[string]string{
				"io.containerd.image.name":          full,
				"org.opencontainers.image.ref.name": tag,
			},
		}},
	})
	if err != nil {
		return fmt.Errorf("encode image index: %w", err)
	}
	dockerManifest, err := json.Marshal([]map[string]any{{
		"Config":   blobPath(configDigest),
		"RepoTags": []string{reference.FamiliarString(tagged)},
		"Layers":   []string{blobPath(layerDigest)},
	}})
	if err != nil {
		return fmt.Errorf("encode docker manifest: %w", err)
	}

	tw := tar.NewWriter(w)
	for _, e := range []struct {
		name string
		data []byte
	}{
		{"blobs", nil}, {"blobs/sha256", nil},
		{blobPath(layerDigest), layer},
		{blobPath(configDigest), config},
		{blobPath(manifestDigest), manifest},
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"manifest.json", dockerManifest},
	} {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if e.data == nil {
			h = &tar.Header{Name: e.name + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)}
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}

// WriteArchiveFile writes the archive to path.
func WriteArchiveFile(path string, s Spec) error {
	var buf bytes.Buffer
	if err := WriteArchive(&buf, s); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write image archive %s: %w", path, err)
	}
	return nil
}

func blobPath(d string) string { return "blobs/sha256/" + strings.TrimPrefix(d, "sha256:") }

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// layerTar writes the files as an uncompressed layer tar, parents first.
func layerTar(files []File) ([]byte, error) {
	byPath := map[string]File{}
	for _, f := range files {
		byPath[path.Clean(f.Path)] = f
	}
	// Every parent directory exists in the layer.
	for p := range byPath {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = File{Path: d, Mode: os.ModeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(byPath))
	for p := range byPath {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		f := byPath[p]
		name := strings.TrimPrefix(p, "/")
		h := &tar.Header{Name: name, Mode: int64(f.Mode.Perm()), ModTime: time.Unix(0, 0)}
		if f.Mode&os.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		var data []byte
		switch {
		case f.Symlink != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Symlink, 0o777
		case f.Mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, name+"/"
		default:
			h.Typeflag = tar.TypeReg
			data = f.Data
			if f.Source != "" {
				b, err := os.ReadFile(f.Source)
				if err != nil {
					return nil, fmt.Errorf("read %s for layer: %w", f.Source, err)
				}
				data = b
			}
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", p, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	return buf.Bytes(), nil
}

// TestServicePackage is the Go package of the test program.
const TestServicePackage = "github.com/cilo-dev/cilo/test/images/testsvc"

// TestServiceArchive builds the test image (testsvc at /testsvc as the
// entrypoint, busybox for shells) under ref into dir and returns the
// archive's path. Run it from inside the cilo module.
func TestServiceArchive(ctx context.Context, ref, dir string) (string, error) {
	bin := path.Join(dir, "testsvc")
	if err := BuildGo(ctx, ".", TestServicePackage, bin); err != nil {
		return "", err
	}
	bb, err := Busybox()
	if err != nil {
		return "", err
	}
	out := path.Join(dir, "testsvc.tar")
	spec := Spec{
		Ref:        ref,
		Files:      append([]File{{Path: "/testsvc", Source: bin, Mode: 0o755}}, bb...),
		Entrypoint: []string{"/testsvc"},
		Cmd:        []string{"sleep"},
	}
	return out, WriteArchiveFile(out, spec)
}
