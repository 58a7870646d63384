//go:build !linux || !cgo

package agent

// releaseCMemory is a no-op where the C heap is not glibc's.
func releaseCMemory() bool { return false }
