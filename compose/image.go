package compose

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	nerdtypes "github.com/containerd/nerdctl/v2/pkg/api/types"
	nerdconfig "github.com/containerd/nerdctl/v2/pkg/config"
	"github.com/containerd/nerdctl/v2/pkg/imgutil"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// snapshotter is the snapshotter of cilo's containers (containerd's
// default on Linux, on 1.6 and 2.x alike).
const snapshotter = "overlayfs"

// ErrNoBuildkit is wrapped when a service must be built and no buildkitd
// answers.
var ErrNoBuildkit = errors.New("no buildkitd reachable")

// imageRef is the image a service runs: its image:, or for a build: service
// without one, docker compose v2's name <project>-<service>.
func imageRef(p *types.Project, s types.ServiceConfig) string {
	if s.Image != "" {
		return s.Image
	}
	return p.Name + "-" + s.Name
}

// ensureImages makes every service's image present and unpacked, before
// any container is created: a missing image fails Up with nothing started.
func (e *Engine) ensureImages(ctx context.Context, c *containerd.Client, p *types.Project) (map[string]containerd.Image, error) {
	out := map[string]containerd.Image{}
	names := p.ServiceNames()
	sort.Strings(names)
	done := map[string]containerd.Image{}
	for _, name := range names {
		s := p.Services[name]
		ref := imageRef(p, s)
		if img, ok := done[ref]; ok {
			out[name] = img
			continue
		}
		img, err := e.ensureImage(ctx, c, p, s, ref)
		if err != nil {
			return nil, err
		}
		done[ref] = img
		out[name] = img
	}
	return out, nil
}

func (e *Engine) ensureImage(ctx context.Context, c *containerd.Client, p *types.Project, s types.ServiceConfig, ref string) (containerd.Image, error) {
	policy := s.PullPolicy
	local, lerr := e.localImage(ctx, c, ref)
	if lerr != nil && !errdefs.IsNotFound(lerr) {
		return nil, fmt.Errorf("service %q: look up image %s: %w", s.Name, ref, lerr)
	}
	if s.Build != nil {
		// As docker compose without --build: an existing image is used
		// as it is, so a prebuilt image can be loaded instead of built.
		if local != nil && policy != types.PullPolicyBuild {
			return local, nil
		}
		if err := e.build(ctx, c, p, s, ref); err != nil {
			return nil, err
		}
		return e.localImage(ctx, c, ref)
	}
	mode := "missing"
	switch policy {
	case types.PullPolicyAlways:
		mode = "always"
	case types.PullPolicyNever:
		mode = "never"
	case types.PullPolicyBuild:
		return nil, fmt.Errorf("service %q: pull_policy build needs a build: section", s.Name)
	}
	if local != nil && mode != "always" {
		return local, nil
	}
	if mode == "never" {
		return nil, fmt.Errorf("service %q: image %s is not present locally and pull_policy is never (load it with cilo image load <archive>)", s.Name, ref)
	}
	fmt.Fprintf(e.opts.Progress, "pulling %s for service %s\n", ref, s.Name)
	g := nerdconfig.New()
	g.Address, g.Namespace, g.Snapshotter = e.opts.Address, e.opts.Namespace, snapshotter
	_, err := imgutil.EnsureImage(ctx, c, ref, nerdtypes.ImagePullOptions{
		Stdout:          e.opts.Progress,
		Stderr:          e.opts.Progress,
		GOptions:        nerdtypes.GlobalCommandOptions(*g),
		OCISpecPlatform: []ocispec.Platform{platforms.DefaultSpec()},
		Mode:            mode,
	})
	if err != nil {
		return nil, fmt.Errorf("service %q: image %s is not present locally and could not be pulled: %w (load a saved image with cilo image load <archive>)", s.Name, ref, err)
	}
	return e.localImage(ctx, c, ref)
}

// localImage returns the unpacked local image ref, or an error wrapping
// errdefs.ErrNotFound.
func (e *Engine) localImage(ctx context.Context, c *containerd.Client, ref string) (containerd.Image, error) {
	full, err := normalizeRef(ref)
	if err != nil {
		return nil, err
	}
	img, err := c.GetImage(ctx, full)
	if err != nil {
		return nil, err
	}
	ok, err := img.IsUnpacked(ctx, snapshotter)
	if err != nil {
		return nil, fmt.Errorf("check image %s: %w", ref, err)
	}
	if !ok {
		if err := img.Unpack(ctx, snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", ref, err)
		}
	}
	return img, nil
}

// buildkitAddress is where a buildkitd would answer: BUILDKIT_HOST, else
// its default socket.
func buildkitAddress() string {
	if h := os.Getenv("BUILDKIT_HOST"); h != "" {
		return h
	}
	return "unix:///run/buildkit/buildkitd.sock"
}

// buildkitReachable dials the buildkitd address (unix or tcp).
func buildkitReachable(addr string) bool {
	u, err := url.Parse(addr)
	if err != nil {
		return false
	}
	var network, target string
	switch u.Scheme {
	case "unix":
		network, target = "unix", u.Path
	case "tcp":
		network, target = "tcp", u.Host
	default:
		return false
	}
	conn, err := net.DialTimeout(network, target, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// build builds a build: service's image with BuildKit (through buildctl,
// as nerdctl does) and imports it into containerd under ref.
func (e *Engine) build(ctx context.Context, c *containerd.Client, p *types.Project, s types.ServiceConfig, ref string) error {
	addr := buildkitAddress()
	if !buildkitReachable(addr) {
		return fmt.Errorf("service %q needs its image %s built, but %w at %s: run a buildkitd (or set BUILDKIT_HOST), or build the image elsewhere and load it with cilo image load <archive> (an image named %s is used as it is)",
			s.Name, ref, ErrNoBuildkit, addr, ref)
	}
	buildctl, err := exec.LookPath("buildctl")
	if err != nil {
		return fmt.Errorf("service %q: a buildkitd answers at %s but the buildctl client is not installed: %w", s.Name, addr, err)
	}
	full, err := normalizeRef(ref)
	if err != nil {
		return err
	}
	b := s.Build
	dockerfile := b.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	if !filepath.IsAbs(dockerfile) {
		dockerfile = filepath.Join(b.Context, dockerfile)
	}
	args := []string{"--addr", addr, "build", "--frontend", "dockerfile.v0",
		"--local", "context=" + b.Context, "--local", "dockerfile=" + filepath.Dir(dockerfile),
		"--opt", "filename=" + filepath.Base(dockerfile),
		"--output", "type=docker,name=" + full}
	if b.Target != "" {
		args = append(args, "--opt", "target="+b.Target)
	}
	keys := make([]string, 0, len(b.Args))
	for k := range b.Args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := b.Args[k]; v != nil {
			args = append(args, "--opt", "build-arg:"+k+"="+*v)
		}
	}
	fmt.Fprintf(e.opts.Progress, "building %s for service %s with BuildKit at %s\n", ref, s.Name, addr)
	cmd := exec.CommandContext(ctx, buildctl, args...)
	cmd.Stderr = e.opts.Progress
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("service %q: build: %w", s.Name, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("service %q: start buildctl: %w", s.Name, err)
	}
	_, ierr := importArchive(ctx, c, out)
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("service %q: build image %s: %w", s.Name, ref, err)
	}
	if ierr != nil {
		return fmt.Errorf("service %q: import built image %s: %w", s.Name, ref, ierr)
	}
	return nil
}

// LoadImage imports a `docker save` or OCI archive into cilo's containerd
// namespace and unpacks it, returning the image names it held.
func (e *Engine) LoadImage(ctx context.Context, archive string) ([]string, error) {
	c, ctx, err := e.connect(ctx)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(archive)
	if err != nil {
		return nil, fmt.Errorf("load image archive: %w", err)
	}
	defer f.Close()
	names, err := importArchive(ctx, c, f)
	if err != nil {
		return nil, fmt.Errorf("load image archive %s: %w", archive, err)
	}
	return names, nil
}

func importArchive(ctx context.Context, c *containerd.Client, r io.Reader) ([]string, error) {
	imgs, err := c.Import(ctx, r, containerd.WithImportPlatform(platforms.Default()))
	if err != nil {
		return nil, err
	}
	var names []string
	seen := map[string]bool{}
	for _, im := range imgs {
		if seen[im.Name] {
			continue
		}
		seen[im.Name] = true
		img := containerd.NewImage(c, im)
		if err := img.Unpack(ctx, snapshotter); err != nil {
			return nil, fmt.Errorf("unpack %s: %w", im.Name, err)
		}
		names = append(names, im.Name)
	}
	if len(names) == 0 {
		return nil, errors.New("the archive holds no image (want docker save or OCI image layout)")
	}
	sort.Strings(names)
	return names, nil
}

// normalizeRef is the name containerd stores ref under.
func normalizeRef(ref string) (string, error) {
	named, err := parseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	return named, nil
}
