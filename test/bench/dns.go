package main

import "context"

// dnsGroup is filled in by the dns area.
func dnsGroup() Group {
	return Group{Name: "dns", Command: "sudo go run ./test/bench -only dns", Run: func(ctx context.Context, env *Env) ([]Row, error) { return nil, nil }}
}
