package replication

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Why TLS 1.3 and not a Noise-style handshake: the standard library has a
// complete, reviewed TLS 1.3 (AEAD records, ephemeral key exchange with
// forward secrecy, transcript signatures) and nothing for Noise, which we
// would have to assemble from primitives, with every nonce and transcript
// detail ours to get wrong. crypto/tls does not expose external PSKs, so
// each gossip secret is turned into an Ed25519 key by HKDF and a
// self-signed certificate around it. Both sides present the certificate of
// their primary secret and accept a peer whose public key is derived from
// any installed secret; the handshake's CertificateVerify proves the peer
// holds the private key, which only a holder of a secret can compute. A
// node without a secret fails the handshake: nothing it sends is read.

// identity is the TLS identity derived from one gossip secret.
type identity struct {
	cert tls.Certificate
	pub  ed25519.PublicKey
}

const hkdfInfo = "singularity-edge replication identity v1"

func deriveIdentity(secret []byte) (identity, error) {
	seed, err := hkdf.Key(sha256.New, secret, []byte("singularity-edge"), hkdfInfo, ed25519.SeedSize)
	if err != nil {
		return identity{}, err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "singularity-edge replication"},
		NotBefore:    time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return identity{}, err
	}
	return identity{cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, pub: pub}, nil
}

// credentials are the TLS configurations of both roles.
type credentials struct {
	server, client *tls.Config
}

// ErrUnknownPeerKey is the handshake error for a peer whose certificate is
// not derived from an installed secret.
var ErrUnknownPeerKey = errors.New("peer key not derived from an installed gossip secret")

func newCredentials(secrets [][]byte) (*credentials, error) {
	if len(secrets) == 0 || len(secrets[0]) == 0 {
		return nil, errors.New("replication needs the gossip secret (EDGE_GOSSIP_KEY)")
	}
	var primary identity
	var accepted []ed25519.PublicKey
	for i, s := range secrets {
		id, err := deriveIdentity(s)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			primary = id
		}
		accepted = append(accepted, id.pub)
	}
	verify := func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) != 1 {
			return ErrUnknownPeerKey
		}
		c, err := x509.ParseCertificate(rawCerts[0])
		if err != nil {
			return ErrUnknownPeerKey
		}
		pub, ok := c.PublicKey.(ed25519.PublicKey)
		if !ok {
			return ErrUnknownPeerKey
		}
		for _, a := range accepted {
			if bytes.Equal(pub, a) {
				return nil
			}
		}
		return ErrUnknownPeerKey
	}
	base := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{primary.cert},
		VerifyPeerCertificate: verify,
		NextProtos:            []string{"singularity-edge-replication/1"},
	}
	server := base.Clone()
	server.ClientAuth = tls.RequireAnyClientCert
	client := base.Clone()
	// The chain is checked by VerifyPeerCertificate (key pinning), not
	// by the WebPKI.
	client.InsecureSkipVerify = true
	client.ServerName = "singularity-edge-replication"
	return &credentials{server: server, client: client}, nil
}

// conn is one authenticated replication stream. Writes are serialized;
// reads belong to one goroutine.
type conn struct {
	c        net.Conn
	r        *bufio.Reader
	maxFrame int
	timeout  time.Duration

	wmu sync.Mutex
	w   *bufio.Writer

	in, out *atomic.Uint64 // bytes, shared with the peer's status
	peer    hello
}

func newConn(c net.Conn, maxFrame int, timeout time.Duration, in, out *atomic.Uint64) *conn {
	if in == nil {
		in = new(atomic.Uint64)
	}
	if out == nil {
		out = new(atomic.Uint64)
	}
	return &conn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10),
		maxFrame: maxFrame, timeout: timeout, in: in, out: out}
}

func (c *conn) send(typ msgType, payload []byte) error {
	if len(payload) > c.maxFrame {
		return fmt.Errorf("%w: %s of %d bytes", ErrFrameTooLarge, typ, len(payload))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.timeout > 0 {
		_ = c.c.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	var h [frameHeaderSize]byte
	h[0] = byte(typ)
	binary.BigEndian.PutUint32(h[1:], uint32(len(payload)))
	if _, err := c.w.Write(h[:]); err != nil {
		return err
	}
	if _, err := c.w.Write(payload); err != nil {
		return err
	}
	c.out.Add(uint64(frameHeaderSize + len(payload)))
	return c.w.Flush()
}

// recv reads the next frame; idle bounds the wait (0: no bound).
func (c *conn) recv(idle time.Duration) (frame, error) {
	if idle > 0 {
		_ = c.c.SetReadDeadline(time.Now().Add(idle))
	} else {
		_ = c.c.SetReadDeadline(time.Time{})
	}
	f, err := readFrame(c.r, c.maxFrame)
	if err == nil {
		c.in.Add(uint64(frameHeaderSize + len(f.payload)))
	}
	return f, err
}

func (c *conn) close() error { return c.c.Close() }

// handshake runs TLS (already configured on c) and exchanges Hello frames,
// refusing a peer of another cluster or protocol.
func handshake(ctx context.Context, tc *tls.Conn, c *conn, me hello, timeout time.Duration) error {
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	_ = tc.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = tc.SetDeadline(time.Time{}) }()
	if err := c.send(msgHello, me.encode()); err != nil {
		return err
	}
	f, err := c.recv(timeout)
	if err != nil {
		return err
	}
	switch f.typ {
	case msgReject:
		r, err := decodeReject(f.payload)
		if err != nil {
			return err
		}
		return &RejectError{Code: r.Code, Reason: r.Reason}
	case msgHello:
	default:
		return fmt.Errorf("%w: %s before hello", ErrBadFrame, f.typ)
	}
	peer, err := decodeHello(f.payload)
	if err != nil {
		return err
	}
	// Set before any refusal, so that the caller knows whom it refused.
	c.peer = peer
	var rej *reject
	switch {
	case peer.Proto != protoVersion:
		rej = &reject{rejectProto, fmt.Sprintf("protocol %d, this node speaks %d: run the same version on every node", peer.Proto, protoVersion)}
	case peer.ClusterID != me.ClusterID && peer.ClusterID != "" && me.ClusterID != "":
		// An empty id is a new node that has not ingested a snapshot
		// yet: it learns the cluster's id from it. Both sides proved
		// the cluster secret in the TLS handshake already.
		rej = &reject{rejectDifferentCluster, fmt.Sprintf("cluster %q, this node is in %q", peer.ClusterID, me.ClusterID)}
	case !bytes.Equal(peer.KeyFingerprint, me.KeyFingerprint):
		// Every private key in a change set or snapshot is sealed with
		// the sender's key: a peer with another one could open none of
		// them, and what it issued none of ours could open. Both sides
		// compare, so neither sends the other anything.
		rej = &reject{rejectEncryptionKey, keyDiffers(peer, me)}
	case peer.NodeID == me.NodeID:
		rej = &reject{rejectSelf, "connected to itself"}
	}
	if rej != nil {
		_ = c.send(msgReject, rej.encode())
		return &RejectError{Code: rej.Code, Reason: rej.Reason, Local: true}
	}
	return nil
}

// keyDiffers is the refusal of a peer with another encryption key, in
// words an operator can act on.
func keyDiffers(peer, me hello) string {
	return fmt.Sprintf("encryption key differs: node %s (%s) has %s, this node has %s: set the same EDGE_ENCRYPTION_KEY on every node",
		peer.Name, peer.NodeID, describeKey(peer.KeyFingerprint), describeKey(me.KeyFingerprint))
}

// describeKey names a key by its fingerprint, which reveals nothing of it.
func describeKey(fp []byte) string {
	if len(fp) == 0 {
		return "no key"
	}
	return fmt.Sprintf("key %x", fp)
}

// RejectError is a stream refused by the handshake.
type RejectError struct {
	Code   uint64
	Reason string
	Local  bool // we refused the peer (else the peer refused us)
}

func (e *RejectError) Error() string {
	who := "peer refused us"
	if e.Local {
		who = "refused peer"
	}
	return fmt.Sprintf("replication handshake: %s: %s", who, e.Reason)
}

// ErrDifferentCluster matches a RejectError for another cluster id.
var ErrDifferentCluster = errors.New("different cluster")

// ErrEncryptionKeyDiffers matches a RejectError for a peer whose
// EDGE_ENCRYPTION_KEY is not this node's (or who has none, or we none).
var ErrEncryptionKeyDiffers = errors.New("encryption key differs")

// Is makes errors.Is(err, ErrDifferentCluster) and
// errors.Is(err, ErrEncryptionKeyDiffers) work.
func (e *RejectError) Is(target error) bool {
	return (target == ErrDifferentCluster && e.Code == rejectDifferentCluster) ||
		(target == ErrEncryptionKeyDiffers && e.Code == rejectEncryptionKey)
}
