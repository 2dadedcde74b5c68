package main

import "context"

// workspaceGroup is filled in by the workspace area.
func workspaceGroup() Group {
	return Group{Name: "workspace", Command: "sudo go run ./test/bench -only workspace", Run: func(ctx context.Context, env *Env) ([]Row, error) { return nil, nil }}
}
