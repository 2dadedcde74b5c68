// Command cilo runs many isolated copies of one project side by side: each
// environment gets its own network namespace, copy-on-write workspace,
// compose services and DNS names.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:]))
}
