// Command mkimage packs static Go programs (and optionally busybox-static)
// into a one-layer image archive that `cilo image load`, `ctr image import`
// and `podman load` accept:
//
//	go run ./test/images/mkimage -ref cilo-example-api -o api.tar -go ./examples/api=/app/api -entrypoint /app/api
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilo-dev/cilo/test/images"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run() error {
	var gos, envs, ports list
	ref := flag.String("ref", "", "image reference")
	out := flag.String("o", "", "archive to write")
	busybox := flag.Bool("busybox", false, "add busybox-static as /bin/sh and friends")
	entry := flag.String("entrypoint", "", "entrypoint (space separated)")
	cmd := flag.String("cmd", "", "command (space separated)")
	workdir := flag.String("workdir", "", "working directory")
	flag.Var(&gos, "go", "PKG=/path/in/image: build the Go main package PKG statically into the image (repeatable)")
	flag.Var(&envs, "env", "KEY=VALUE in the image config (repeatable)")
	flag.Var(&ports, "expose", "exposed port, e.g. 80/tcp (repeatable)")
	flag.Parse()
	if *ref == "" || *out == "" || len(gos) == 0 {
		return fmt.Errorf("-ref, -o and at least one -go are required")
	}
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	spec := images.Spec{Ref: *ref, Env: envs, ExposedPorts: ports, WorkingDir: *workdir,
		Entrypoint: strings.Fields(*entry), Cmd: strings.Fields(*cmd)}
	for i, g := range gos {
		pkg, dst, ok := strings.Cut(g, "=")
		if !ok {
			return fmt.Errorf("-go %q: want PKG=/path/in/image", g)
		}
		bin := filepath.Join(tmp, fmt.Sprintf("bin%d", i))
		if err := images.BuildGo(ctx, ".", pkg, bin); err != nil {
			return err
		}
		spec.Files = append(spec.Files, images.File{Path: dst, Source: bin, Mode: 0o755})
	}
	if *busybox {
		bb, err := images.Busybox()
		if err != nil {
			return err
		}
		spec.Files = append(spec.Files, bb...)
	}
	return images.WriteArchiveFile(*out, spec)
}
