// Command singularity-edge is the Singularity Edge agent and its CLI: one
// binary that runs the edge load balancer (`singularity-edge agent`) and
// manages it (`pools`, `backends`, `certs`, `cluster`, `db`).
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	root := newRootCommand()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		var ec *exitCodeError
		if errors.As(err, &ec) {
			os.Exit(ec.code)
		}
		os.Exit(1)
	}
}
