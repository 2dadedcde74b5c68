package main

import "context"

// composeGroup is filled in by the compose area.
func composeGroup() Group {
	return Group{Name: "compose", Command: "sudo go run ./test/bench -only compose", Run: func(ctx context.Context, env *Env) ([]Row, error) { return nil, nil }}
}
