// Command netfloor makes the network of one env and nothing else: its
// namespace, bridge, veth, addresses and routes, through the same nsnet
// code cilo uses, in the smallest Go program that can. The core benchmark
// runs it the way it runs `cilo create`, one process per env, 20 at a
// time, as the floor under a create's latency: no state, workspace or DNS,
// and no second process.
//
// Usage: netfloor PREFIX POOL INDEX NETNS (the host pieces must exist).
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"

	"github.com/cilo-dev/cilo/nsnet"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "netfloor:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("usage: netfloor PREFIX POOL INDEX NETNS")
	}
	pool, err := netip.ParsePrefix(args[1])
	if err != nil {
		return err
	}
	i, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	n, err := nsnet.New(args[0], pool)
	if err != nil {
		return err
	}
	return n.Create(context.Background(), n.Link(i, args[3]), "cilo bench floor")
}
