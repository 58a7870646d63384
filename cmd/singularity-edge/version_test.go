package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/agent"
)

func TestVersionFlag(t *testing.T) {
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"--version"})
	if err := root.Execute(); err != nil {
		t.Fatalf("--version: %v", err)
	}
	want := "singularity-edge " + agent.VersionString()
	if got := strings.TrimSpace(out.String()); got != want {
		t.Errorf("--version printed %q, want %q", got, want)
	}
}
