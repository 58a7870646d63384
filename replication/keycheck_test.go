package replication

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/singularity-ng/singularity-edge/storage"
)

func testEncKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// keyedStore opens a store in cluster clusterID (or a new, empty one
// awaiting a bootstrap when clusterID is "") sealing private keys with key
// (nil: none).
func keyedStore(t *testing.T, id, clusterID string, key []byte) *testStore {
	t.Helper()
	cfg := testStorageConfig(t.TempDir(), id)
	cfg.ClusterID = clusterID
	cfg.EncryptionKey = key
	return openTestStore(t, cfg)
}

func keyRejects(n *node) float64 {
	return testutil.ToFloat64(n.eng.metrics.handshakes.WithLabelValues("encryption_key"))
}

func readyGauge(n *node) float64 { return testutil.ToFloat64(n.eng.metrics.ready) }

// pipeHandshake runs the handshake of two nodes over loopback TCP (both
// send their Hello before reading, which needs the socket's buffers) with
// real TLS and returns each side's result.
func pipeHandshake(t *testing.T, client, server hello) (clientErr, serverErr error) {
	t.Helper()
	creds, err := newCredentials([][]byte{testSecret('k')})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := make(chan error, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			errs <- err
			return
		}
		defer raw.Close()
		tc := tls.Server(raw, creds.server)
		errs <- handshake(ctx, tc, newConn(tc, DefaultMaxFrameSize, time.Second, nil, nil), server, 5*time.Second)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Client(raw, creds.client)
	clientErr = handshake(ctx, tc, newConn(tc, DefaultMaxFrameSize, time.Second, nil, nil), client, 5*time.Second)
	return clientErr, <-errs
}

func TestHandshakeComparesKeyFingerprints(t *testing.T) {
	k1 := storage.EncryptionKeyFingerprint(testEncKey(1))
	k2 := storage.EncryptionKeyFingerprint(testEncKey(2))
	node := func(id string, proto uint64, fp []byte) hello {
		return hello{Proto: proto, ClusterID: "c1", NodeID: id, Name: id, Ready: true, KeyFingerprint: fp}
	}
	tests := []struct {
		name           string
		client, server hello
		code           uint64 // 0: both sides accept
	}{
		{"same key", node("a", protoVersion, k1), node("b", protoVersion, k1), 0},
		{"neither has a key", node("a", protoVersion, nil), node("b", protoVersion, nil), 0},
		{"different keys", node("a", protoVersion, k1), node("b", protoVersion, k2), rejectEncryptionKey},
		{"client without a key", node("a", protoVersion, nil), node("b", protoVersion, k1), rejectEncryptionKey},
		{"server without a key", node("a", protoVersion, k1), node("b", protoVersion, nil), rejectEncryptionKey},
		// A build from before the fingerprint sends a version 1 Hello
		// (it cannot decode ours either): refused by its version.
		{"older build", node("a", 1, nil), node("b", protoVersion, k1), rejectProto},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cerr, serr := pipeHandshake(t, tt.client, tt.server)
			if tt.code == 0 {
				if cerr != nil || serr != nil {
					t.Fatalf("refused: client %v, server %v", cerr, serr)
				}
				return
			}
			// The server always decodes the client's Hello and refuses
			// it itself; so does the client unless the Hello it sent is
			// of the older layout, whose decoder gives up on ours.
			var rej *RejectError
			if !errors.As(serr, &rej) || !rej.Local || rej.Code != tt.code {
				t.Fatalf("server: %v, want a refusal with code %d", serr, tt.code)
			}
			if tt.code == rejectEncryptionKey {
				if !errors.As(cerr, &rej) || !rej.Local || rej.Code != tt.code || !errors.Is(cerr, ErrEncryptionKeyDiffers) {
					t.Fatalf("client: %v, want a refusal with code %d", cerr, tt.code)
				}
				for _, err := range []error{cerr, serr} {
					if !strings.Contains(err.Error(), "set the same EDGE_ENCRYPTION_KEY on every node") {
						t.Fatalf("refusal does not say what to do: %v", err)
					}
				}
			}
		})
	}
}

// Two established nodes of one cluster whose encryption keys differ (or
// one of which has none) refuse each other's streams: nothing is applied
// either way, both count and show the refusal, and neither reports
// itself ready.
func TestEncryptionKeyMismatchRefusesStreams(t *testing.T) {
	for _, tt := range []struct {
		name       string
		keyA, keyB []byte
	}{
		{"different keys", testEncKey(1), testEncKey(2)},
		{"one without a key", testEncKey(1), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc := newTestCluster()
			as := keyedStore(t, "a", "c1", tt.keyA)
			bs := keyedStore(t, "b", "c1", tt.keyB)
			as.write(map[string]*string{"from-a": str("v")})
			bs.write(map[string]*string{"from-b": str("v")})
			a := startEngine(t, tc, "a", as, [][]byte{testSecret('k')})
			b := startEngine(t, tc, "b", bs, [][]byte{testSecret('k')})
			waitReady(t, a)
			waitReady(t, b)
			for _, pair := range [][2]*node{{a, b}, {b, a}} {
				n, other := pair[0], pair[1]
				waitUntil(t, n.id+" refusing "+other.id+" for its key", func() bool {
					st := n.eng.Status()[other.id]
					return keyRejects(n) > 0 && st.EncryptionKeyDiffers && st.LastError != ""
				})
				st := n.eng.Status()[other.id]
				if st.Connected || !strings.Contains(st.LastError, "set the same EDGE_ENCRYPTION_KEY on every node") {
					t.Fatalf("%s's status of %s: %+v", n.id, other.id, st)
				}
				waitUntil(t, n.id+" not ready", func() bool { return readyGauge(n) == 0 })
			}
			// Several sync periods: nothing crosses in either direction.
			time.Sleep(5 * 300 * time.Millisecond)
			for _, pair := range [][2]*node{{a, b}, {b, a}} {
				n, other := pair[0], pair[1]
				if h := n.store.heldOf(other.id); len(h) != 0 {
					t.Fatalf("%s holds %v of %s", n.id, h, other.id)
				}
				if strings.Contains(n.store.dump(), "from-"+other.id) {
					t.Fatalf("%s holds a row of %s", n.id, other.id)
				}
				for _, path := range []string{"push", "sync"} {
					if v := testutil.ToFloat64(n.eng.metrics.applied.WithLabelValues(path)); v != 0 {
						t.Fatalf("%s applied %v sets by %s", n.id, v, path)
					}
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := a.eng.dial(ctx, b.eng.Addr().String(), nil); !errors.Is(err, ErrEncryptionKeyDiffers) {
				t.Fatalf("dial: %v, want ErrEncryptionKeyDiffers", err)
			}
		})
	}
}

// A new node whose key differs from the cluster's gets no snapshot and
// stays not ready, however long it waits; it does not start a cluster of
// its own, and it does not make the established node not ready. With the
// right key the same node bootstraps.
func TestBootstrapRefusedForEncryptionKey(t *testing.T) {
	tc := newTestCluster()
	as := keyedStore(t, "a", "c1", testEncKey(1))
	as.write(map[string]*string{"p": str("v")})
	a := startEngine(t, tc, "a", as, [][]byte{testSecret('k')})
	waitReady(t, a)

	d := startEngine(t, tc, "d", keyedStore(t, "d", "", nil), [][]byte{testSecret('k')})
	waitUntil(t, "a refusing d", func() bool { return keyRejects(a) > 0 && a.eng.Status()["d"].EncryptionKeyDiffers })
	waitUntil(t, "d refusing a", func() bool { return keyRejects(d) > 0 && d.eng.Status()["a"].EncryptionKeyDiffers })
	select {
	case <-d.eng.Ready():
		t.Fatal("a node whose key differs from the cluster's turned ready")
	case <-time.After(10 * cfgBootstrapAloneAfter):
	}
	if v := testutil.ToFloat64(d.eng.metrics.snapshotBytes.WithLabelValues("in")); v != 0 {
		t.Fatalf("d ingested %v snapshot bytes", v)
	}
	if readyGauge(d) != 0 || readyGauge(a) != 1 {
		t.Fatalf("ready gauges: a %v (want 1), d %v (want 0)", readyGauge(a), readyGauge(d))
	}
	if len(d.store.heldOf("a")) != 0 {
		t.Fatal("d holds a's writes")
	}
	d.stop()
	tc.mu.Lock()
	delete(tc.members, "d")
	tc.notifyLocked()
	tc.mu.Unlock()

	e := startEngine(t, tc, "e", keyedStore(t, "e", "", testEncKey(1)), [][]byte{testSecret('k')})
	waitReady(t, e)
	waitConverged(t, a, e)
	if readyGauge(e) != 1 {
		t.Fatal("e with the cluster's key is not ready")
	}
}

// In a cluster of three, the node whose key differs is the one that is
// not ready; the two that agree replicate and do not wait for it.
func TestKeyIsolatedNodeIsNotReady(t *testing.T) {
	tc := newTestCluster()
	keys := map[string][]byte{"a": testEncKey(1), "b": testEncKey(1), "c": testEncKey(2)}
	nodes := map[string]*node{}
	for _, id := range []string{"a", "b", "c"} {
		s := keyedStore(t, id, "c1", keys[id])
		s.write(map[string]*string{"from-" + id: str("v")})
		nodes[id] = startEngine(t, tc, id, s, [][]byte{testSecret('k')})
	}
	a, b, c := nodes["a"], nodes["b"], nodes["c"]
	for _, n := range nodes {
		waitReady(t, n)
	}
	waitConverged(t, a, b)
	waitUntil(t, "c refused by a and b", func() bool {
		return a.eng.Status()["c"].EncryptionKeyDiffers && b.eng.Status()["c"].EncryptionKeyDiffers &&
			c.eng.Status()["a"].EncryptionKeyDiffers && c.eng.Status()["b"].EncryptionKeyDiffers
	})
	waitUntil(t, "c not ready", func() bool { return readyGauge(c) == 0 })
	if readyGauge(a) != 1 || readyGauge(b) != 1 {
		t.Fatalf("a and b share a key: ready %v and %v, want 1", readyGauge(a), readyGauge(b))
	}
	if strings.Contains(c.store.dump(), "from-a") || strings.Contains(a.store.dump(), "from-c") {
		t.Fatal("rows crossed a key mismatch")
	}

	seq := a.store.write(map[string]*string{"after": str("v")})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := a.eng.Flush(ctx)
	if err != nil {
		t.Fatalf("flush waited for the refused node: %v", err)
	}
	if len(res.Missing) != 1 || res.Missing[0].NodeID != "c" || res.Missing[0].Reason != "encryption key differs" {
		t.Fatalf("flush of seq %d: missing %+v", seq, res.Missing)
	}
}
