package osslsign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time. The benchmarks report
// it per operation (cpu-µs/op) beside ns/op: on a shared machine wall time
// measures the co-tenants as much as the code.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loop runs op b.N times and reports its CPU time per operation.
func loop(b *testing.B, op func() error) {
	b.Helper()
	start := cpuTime(b)
	n := 0
	for b.Loop() {
		if err := op(); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(time.Microsecond)/float64(n), "cpu-µs/op")
}

// BenchmarkSign is the server's signature of a full TLS 1.3 handshake:
// this package's Signer beside the Go key it wraps (the anchor), run in
// the same invocation. Compare with `openssl speed rsa2048 ecdsap256` on
// the same core.
func BenchmarkSign(b *testing.B) {
	digest := digestOf(crypto.SHA256, "transcript")
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	rsaKey := testRSAKey(b)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		key  crypto.Signer
		opts crypto.SignerOpts
	}{
		{"rsa2048-pss", rsaKey, pss},
		{"rsa2048-pkcs1v15", rsaKey, crypto.SHA256},
		{"ecdsa-p256", ecKey, crypto.SHA256},
	} {
		b.Run(bc.name+"/go", func(b *testing.B) {
			loop(b, func() error {
				_, err := bc.key.Sign(rand.Reader, digest, bc.opts)
				return err
			})
		})
		b.Run(bc.name+"/openssl", func(b *testing.B) {
			var c Counters
			s := newSigner(b, bc.key, &c)
			loop(b, func() error {
				_, err := s.Sign(rand.Reader, digest, bc.opts)
				return err
			})
			if Available() && c.OpenSSL.Load() == 0 {
				b.Fatal("OpenSSL made no signature")
			}
		})
	}
}

// BenchmarkFirstSign is a certificate's first handshake signature, key
// import included (what a handshake pays after the certificate cache
// parsed the certificate again), beside Go's signature alone.
func BenchmarkFirstSign(b *testing.B) {
	digest := digestOf(crypto.SHA256, "transcript")
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	key := testRSAKey(b)
	b.Run("rsa2048-pss/go", func(b *testing.B) {
		loop(b, func() error {
			_, err := key.Sign(rand.Reader, digest, pss)
			return err
		})
	})
	b.Run("rsa2048-pss/openssl", func(b *testing.B) {
		loop(b, func() error {
			_, err := newSigner(b, key, nil).Sign(rand.Reader, digest, pss)
			return err
		})
	})
}
