package cluster

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/test/itest"
)

// These tests run three agent processes against Pebble: Pebble resolves
// every name through pebble-challtestsrv's DNS, which the test points at
// one agent or another; every agent listens on the same HTTP and HTTPS
// ports (Pebble's httpPort and tlsPort) on an address of its own.

// startPebble listens on listenIP (where the agents reach it), validates
// on httpPort and tlsPort of whatever address challtestsrv gives a name
// (defaultIP unless set with Resolve), and validates every order afresh.
// profiles maps profile names to their validity in seconds (nil: Pebble's
// single default profile).
func startPebble(t *testing.T, listenIP, defaultIP string, httpPort, tlsPort int, profiles map[string]int) *itest.Pebble {
	t.Helper()
	return itest.StartPebble(t, itest.PebbleConfig{ListenIP: listenIP, DefaultIP: defaultIP,
		HTTPPort: httpPort, TLSPort: tlsPort, Profiles: profiles})
}

// acmePorts is ports with base+4 (HTTPS) free too on every address.
func acmePorts(t *testing.T, ips ...string) ports {
	t.Helper()
	for range 50 {
		p := freePorts(t, ips...)
		ok := true
		for _, ip := range ips {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p.https())))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free ports")
	return ports{}
}

func (p ports) https() int { return p.base + 4 }

// startACMECluster starts one agent per address of ips (in namespaces ns when
// given) with ACME at pebble; extra flags go to every agent.
func startACMECluster(t *testing.T, pb *itest.Pebble, ips, ns []string, p ports, extra ...string) []*agent {
	t.Helper()
	key := gossipKey(t)
	// Private keys travel sealed in change sets: every agent of a cluster
	// has the same store key.
	storeKey := "EDGE_ENCRYPTION_KEY=" + randHex(t, 32)
	seed := net.JoinHostPort(ips[0], strconv.Itoa(p.gossip()))
	var agents []*agent
	for i, ip := range ips {
		c := agentConfig{name: fmt.Sprintf("m%d", i+1), ip: ip, ports: p, key: key, env: []string{storeKey},
			args: append([]string{"--https-addr", net.JoinHostPort(ip, strconv.Itoa(p.https())),
				"--acme-directory", pb.Dir, "--acme-ca-bundle", pb.Bundle, "--acme-email", "ops@acme.test"}, extra...)}
		if i > 0 {
			c.join = []string{seed}
		}
		if ns != nil {
			c.netns = ns[i]
		}
		agents = append(agents, startAgent(t, c))
	}
	for _, a := range agents {
		waitFor(t, a.name+" sees every agent", func() bool { return a.alive() == names(len(ips)) })
	}
	// No wait for the replication streams: the tests order right after
	// the agents see each other, when a stream refused while its peer
	// bootstrapped may still be waiting out its redial backoff. A
	// challenge's wait-for-all gives such a member a grace
	// (replication.Engine.WaitApplied); without it the order failed with
	// "missing m2 (not connected)".
	return agents
}

// acme sends an admin request that may wait for an order.
func (a *agent) acme(method, path string, body any) (int, []byte) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+a.addr(a.ports.admin())+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 90 * time.Second}).Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// handshakeTimeout bounds a test client's connect and TLS handshake. It
// only catches a hang: the agent ends a handshake itself after its
// TLSHandshakeTimeout (10 s), and that failure is what a test must see.
// A shorter bound measured the machine instead: at a load average of 16
// a handshake took over the 3 s this once was, and a renewal "failed".
const handshakeTimeout = 30 * time.Second

// handshake does one TLS handshake with a's HTTPS listener for name and
// returns the verified leaf's SHA-256 fingerprint.
func (a *agent) handshake(name string, roots *x509.CertPool) (string, error) {
	return handshakeAt(a.addr(a.ports.https()), name, roots, handshakeTimeout)
}

// handshakeAt is handshake with any address and bound.
func handshakeAt(addr, name string, roots *x509.CertPool, timeout time.Duration) (string, error) {
	d := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].Raw)
	return hex.EncodeToString(sum[:]), nil
}

type certView struct {
	ID          string `json:"id"`
	Fingerprint string `json:"fingerprint"`
	Provider    string `json:"provider"`
}

// Agent m1 orders a certificate while Pebble can reach only m2 (the name
// resolves to m2's address): m2 answers the TLS-ALPN-01 challenge from the
// token m1 wrote, so the token replicated and any agent answers. Then,
// with a client handshaking every 200 ms with each agent, the certificate
// is renewed: no handshake fails, and every agent serves the new
// certificate within seconds. A third certificate for the name passes the
// lowered duplicate budget: the forced renewal is held back, Pebble sees
// no order, and every agent shows the reason. Last, a 30-second
// certificate falls due on all three agents at once (their schedulers
// pass every second) and Pebble sees exactly one order for it.
func TestACMEThreeAgents(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	p := acmePorts(t, ips...)
	pb := startPebble(t, "127.0.0.1", ips[0], p.http(), p.https(), map[string]int{"default": 7776000, "tiny": 30})
	// Two certificates per name set: the issuance and one renewal each,
	// then the budget holds the next order back.
	agents := startACMECluster(t, pb, ips, nil, p, "--acme-renew-interval", "1s", "--acme-duplicate-certs", "2")
	roots := pb.Roots(t)
	const name = "other.acme.test"
	pb.Resolve(t, name, ips[1])
	// The proxy terminates TLS only for names a pool serves; this pool
	// leaves ordering to the POST below.
	agents[0].mustDo(http.MethodPost, "/api/pools", map[string]any{"name": "shop", "algorithm": "round_robin",
		"ssl_mode": "flexible", "ssl_domain": name, "auto_cert": false}, http.StatusCreated)

	start := time.Now()
	code, body := agents[0].acme(http.MethodPost, "/api/certificates", map[string]any{"domain": name, "profile": "default"})
	if code != http.StatusCreated {
		t.Fatalf("POST /api/certificates on m1: %d %s", code, body)
	}
	var cert certView
	if err := json.Unmarshal(body, &cert); err != nil || cert.Fingerprint == "" {
		t.Fatalf("certificate view %s: %v", body, err)
	}
	issued := time.Since(start)
	for _, a := range agents {
		var last error
		waitFor(t, a.name+" serves the certificate", func() bool {
			fp, err := a.handshake(name, roots)
			if err == nil && fp != cert.Fingerprint {
				err = fmt.Errorf("served %s", fp)
			}
			if err != nil && (last == nil || err.Error() != last.Error()) {
				t.Logf("%s: %v", a.name, err)
			}
			last = err
			return err == nil
		})
	}
	t.Logf("POST to 201: %s; POST to served by all three agents: %s", issued.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	// Pebble validated against m2 only: the name resolves nowhere else.
	if !strings.Contains(pb.Proc.Out.String(), "Pulled a task") {
		t.Fatal("Pebble validated nothing")
	}
	// lego prefers tls-alpn-01 over http-01 when the CA offers both (it
	// sorts the offered types), and Pebble logs every HTTP-01 validation:
	// none here. m2 answered it: the acme handshakes are counted there
	// only.
	if strings.Contains(pb.Proc.Out.String(), "Attempting to validate w/ HTTP") {
		t.Fatal("Pebble validated with HTTP-01, want TLS-ALPN-01")
	}
	if !strings.Contains(agents[0].log.String(), "use tls-alpn-01 solver") {
		t.Fatal("m1's lego did not choose the tls-alpn-01 solver")
	}
	for i, a := range agents {
		n := a.metric("singularity_edge_tls_handshakes_total", `result="acme"`)
		if (i == 1) != (n > 0) {
			t.Errorf("%s answered %v acme-tls/1 handshakes; want some on m2 only", a.name, n)
		}
	}

	t.Run("renewal under handshakes", func(t *testing.T) {
		var failed, done atomic.Int64
		var mu sync.Mutex
		var firstErr error
		// seen[i] is when agent i first served a fingerprint other than
		// the old one.
		seen := make([]time.Time, len(agents))
		newFP := make([]string, len(agents))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, a := range agents {
			wg.Go(func() {
				tick := time.NewTicker(200 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					fp, err := a.handshake(name, roots)
					done.Add(1)
					mu.Lock()
					switch {
					case err != nil:
						failed.Add(1)
						if firstErr == nil {
							firstErr = fmt.Errorf("%s: %w", a.name, err)
						}
					case fp != cert.Fingerprint && seen[i].IsZero():
						seen[i], newFP[i] = time.Now(), fp
					}
					mu.Unlock()
				}
			})
		}
		time.Sleep(time.Second)
		code, body := agents[0].acme(http.MethodPost, "/api/certificates/"+cert.ID+"/renew", nil)
		renewed := time.Now()
		if code != http.StatusOK && code != http.StatusCreated {
			close(stop)
			wg.Wait()
			t.Fatalf("renew: %d %s", code, body)
		}
		var after certView
		if err := json.Unmarshal(body, &after); err != nil || after.Fingerprint == "" || after.Fingerprint == cert.Fingerprint {
			close(stop)
			wg.Wait()
			t.Fatalf("renew answered %s", body)
		}
		waitFor(t, "every agent serves the renewed certificate", func() bool {
			mu.Lock()
			defer mu.Unlock()
			for i := range agents {
				if seen[i].IsZero() {
					return false
				}
			}
			return true
		})
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		if failed.Load() > 0 {
			t.Fatalf("%d of %d handshakes failed during the renewal; first: %v", failed.Load(), done.Load(), firstErr)
		}
		for i, a := range agents {
			if newFP[i] != after.Fingerprint {
				t.Errorf("%s served %s after the renewal, want the renewed %s", a.name, newFP[i], after.Fingerprint)
			}
			// A handshake that began before the renew call returned may
			// already see the new certificate: the stored row changes
			// before the API answers.
			t.Logf("%s serves the renewed certificate %s after the renew call returned", a.name, seen[i].Sub(renewed).Round(time.Millisecond))
		}
		t.Logf("%d handshakes, none failed", done.Load())
	})

	t.Run("lowered budget holds back", func(t *testing.T) {
		before := strings.Count(pb.Proc.Out.String(), "Added order")
		code, body := agents[2].acme(http.MethodPost, "/api/certificates/"+cert.ID+"/renew", nil)
		var eb struct {
			Error struct {
				Code     string `json:"code"`
				HeldBack *struct {
					Limit string `json:"limit"`
				} `json:"held_back"`
			} `json:"error"`
		}
		_ = json.Unmarshal(body, &eb)
		if code != http.StatusTooManyRequests || eb.Error.Code != "held_back" || eb.Error.HeldBack == nil || eb.Error.HeldBack.Limit != "duplicate_certs" {
			t.Fatalf("renew on m3 past the duplicate budget: %d %s, want 429 held_back duplicate_certs", code, body)
		}
		for _, a := range agents {
			waitFor(t, a.name+" shows the held-back renewal", func() bool {
				code, body := a.do(http.MethodGet, "/api/certificates/"+cert.ID, nil)
				var v struct {
					Renewal struct {
						Phase    string `json:"phase"`
						HeldBack string `json:"held_back"`
					} `json:"renewal"`
				}
				return code == http.StatusOK && json.Unmarshal(body, &v) == nil &&
					v.Renewal.Phase == "held_back" && strings.Contains(v.Renewal.HeldBack, "duplicate_certs")
			})
		}
		if n := strings.Count(pb.Proc.Out.String(), "Added order"); n != before {
			t.Fatalf("a held-back renewal placed %d orders", n-before)
		}
		// The held-back certificate keeps serving on every agent.
		for _, a := range agents {
			if fp, err := a.handshake(name, roots); err != nil || fp == cert.Fingerprint {
				t.Errorf("%s after the held-back renewal: %v (serves the first certificate again: %v)", a.name, err, fp == cert.Fingerprint)
			}
		}
	})

	t.Run("one order for a due certificate", func(t *testing.T) {
		const due = "due.acme.test"
		pb.Resolve(t, due, ips[2])
		agents[0].mustDo(http.MethodPost, "/api/pools", map[string]any{"name": "due", "algorithm": "round_robin",
			"ssl_mode": "flexible", "ssl_domain": due, "auto_cert": false}, http.StatusCreated)
		offset := len(pb.Proc.Out.String())
		code, body := agents[1].acme(http.MethodPost, "/api/certificates", map[string]any{"domain": due, "profile": "tiny"})
		if code != http.StatusCreated {
			t.Fatalf("POST on m2: %d %s", code, body)
		}
		var first certView
		if err := json.Unmarshal(body, &first); err != nil || first.Fingerprint == "" {
			t.Fatalf("certificate view %s: %v", body, err)
		}
		// Pebble's renewal window for a 30-second certificate is its
		// whole lifetime: it falls due within 30 s, on every agent at
		// once (they share its state and pass every second).
		for _, a := range agents {
			waitFor(t, a.name+" serves the renewed certificate", func() bool {
				fp, err := a.handshake(due, roots)
				return err == nil && fp != first.Fingerprint
			})
		}
		log := pb.Proc.Out.String()[offset:]
		issued := regexp.MustCompile(`Issued certificate serial \S+ for order (\S+)`).FindStringSubmatch(log)
		if issued == nil {
			t.Fatalf("Pebble issued nothing:\n%s", log)
		}
		original := issued[1]
		replaces := map[string]string{}
		for _, m := range regexp.MustCompile(`ARI: order "([^"]+)" is a replacement of "([^"]+)"`).FindAllStringSubmatch(log, -1) {
			replaces[m[1]] = m[2]
		}
		// Every order after the POST's replaces a certificate (ARI):
		// the due one exactly once. Orders replacing the renewed
		// certificate are its own turn, 30 s later.
		var fresh, renewals []string
		for _, m := range regexp.MustCompile(`Added order "([^"]+)" to the db`).FindAllStringSubmatch(log, -1) {
			switch replaces[m[1]] {
			case "":
				fresh = append(fresh, m[1])
			case original:
				renewals = append(renewals, m[1])
			}
		}
		if len(fresh) != 1 || fresh[0] != original || len(renewals) != 1 {
			t.Fatalf("orders: %v without replaces (want only the POST's %s), %v replacing it (want one)", fresh, original, renewals)
		}
		code, body = agents[2].do(http.MethodGet, "/api/certificates/"+first.ID, nil)
		var view struct {
			Renewal struct {
				LastOwner string `json:"last_owner"`
			} `json:"renewal"`
		}
		if code != http.StatusOK || json.Unmarshal(body, &view) != nil || view.Renewal.LastOwner == "" {
			t.Fatalf("GET on m3: %d %s", code, body)
		}
		t.Logf("one order (%s) renewed the due certificate, by %s", renewals[0], view.Renewal.LastOwner)
	})
}

// An agent cut off from the others (network namespaces, blackhole routes
// both ways) before the failure detector notices: the token m1 writes
// cannot reach m3, so Present fails after --acme-present-timeout and lego
// never submits the challenge: Pebble validates nothing and finalizes
// nothing (the order itself is created before the challenge exists, as
// ACME requires). The failure is the POST's answer and the certificate's
// state on every agent.
func TestACMEPartitionedAgentFailsPresent(t *testing.T) {
	lab := newNetLab(t, 3)
	ips := []string{lab.ip(0), lab.ip(1), lab.ip(2)}
	p := ports{base: 18946}
	bridge := fmt.Sprintf("10.77.%d.1", lab.subnet)
	pb := startPebble(t, bridge, ips[0], p.http(), p.https(), nil)
	// Fly's timings: suspicion takes seconds, so the order below starts
	// while m3 is still alive to the others, as a fresh partition is.
	agents := startACMECluster(t, pb, ips, lab.ns, p, "--gossip-preset", "fly", "--acme-present-timeout", "5s")
	for _, name := range []string{"base.acme.test", "cut.acme.test"} {
		agents[0].mustDo(http.MethodPost, "/api/pools", map[string]any{"name": strings.Split(name, ".")[0], "algorithm": "round_robin",
			"ssl_mode": "flexible", "ssl_domain": name, "auto_cert": false}, http.StatusCreated)
	}
	// With every agent reachable an order goes through (and registers
	// the account, so the order below reaches Present at once).
	if code, body := agents[0].acme(http.MethodPost, "/api/certificates", map[string]any{"domain": "base.acme.test"}); code != http.StatusCreated {
		t.Fatalf("POST before the partition: %d %s", code, body)
	}

	before := pb.Proc.Out.String()
	lab.cut(2, 0)
	lab.cut(2, 1)
	code, body := agents[0].acme(http.MethodPost, "/api/certificates", map[string]any{"domain": "cut.acme.test"})
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &eb)
	if code != http.StatusBadGateway || eb.Error.Code != "acme_failed" ||
		!strings.Contains(eb.Error.Message, "not present on every agent") || !strings.Contains(eb.Error.Message, "m3") {
		t.Fatalf("POST with m3 cut off: %d %s, want 502 acme_failed naming m3", code, body)
	}
	out := strings.TrimPrefix(pb.Proc.Out.String(), before)
	if !strings.Contains(out, "Added order") {
		t.Fatalf("no order reached Pebble:\n%s", out)
	}
	for _, line := range []string{"POST /chalZ/", "Pulled a task", "Processing finalization"} {
		if strings.Contains(out, line) {
			t.Fatalf("Pebble was told about the challenge (%q):\n%s", line, out)
		}
	}
	t.Logf("answer: %s", eb.Error.Message)

	// The failed attempt is the certificate's state, on the agents that
	// can read it now and on m3 once the partition heals.
	id := "acme-" + certID("cut.acme.test")
	shows := func(a *agent) bool {
		code, b := a.do(http.MethodGet, "/api/certificates/"+id, nil)
		return code == http.StatusNotFound && strings.Contains(string(b), "the last attempt at") && strings.Contains(string(b), "not present on every agent")
	}
	for _, a := range agents[:2] {
		waitFor(t, a.name+" shows the failed attempt", func() bool { return shows(a) })
	}
	lab.heal(2, 0)
	lab.heal(2, 1)
	waitFor(t, "m3 shows the failed attempt after the heal", func() bool { return shows(agents[2]) })
}

// With --acme-challenges http-01 (a :443 that is passthrough-only or
// behind another TLS terminator), m1 orders a certificate for a name
// that resolves to m2 only: Pebble validates over HTTP-01 against m2,
// which answers from the token m1 wrote, and both agents serve the
// certificate.
func TestACMEHTTP01OtherAgent(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3"}
	p := acmePorts(t, ips...)
	pb := startPebble(t, "127.0.0.1", ips[0], p.http(), p.https(), nil)
	agents := startACMECluster(t, pb, ips, nil, p, "--acme-challenges", "http-01")
	roots := pb.Roots(t)
	const name = "plain.acme.test"
	pb.Resolve(t, name, ips[1])
	agents[0].mustDo(http.MethodPost, "/api/pools", map[string]any{"name": "shop", "algorithm": "round_robin",
		"ssl_mode": "flexible", "ssl_domain": name, "auto_cert": false}, http.StatusCreated)

	start := time.Now()
	code, body := agents[0].acme(http.MethodPost, "/api/certificates", map[string]any{"domain": name})
	if code != http.StatusCreated {
		t.Fatalf("POST /api/certificates on m1: %d %s", code, body)
	}
	var cert certView
	if err := json.Unmarshal(body, &cert); err != nil || cert.Fingerprint == "" {
		t.Fatalf("certificate view %s: %v", body, err)
	}
	issued := time.Since(start)
	for _, a := range agents {
		waitFor(t, a.name+" serves the certificate", func() bool {
			fp, err := a.handshake(name, roots)
			return err == nil && fp == cert.Fingerprint
		})
	}
	t.Logf("POST to 201: %s; POST to served by both agents: %s", issued.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// Pebble logs the URL it fetches by name, not by address; the name
	// resolves to m2 alone, and only m2 answered a challenge request.
	out := pb.Proc.Out.String()
	if want := "Attempting to validate w/ HTTP: http://" + net.JoinHostPort(name, strconv.Itoa(p.http())) + "/.well-known/acme-challenge/"; !strings.Contains(out, want) {
		t.Fatalf("Pebble did not validate %s with HTTP-01 (%q):\n%s", name, want, itest.Tail(out, 40))
	}
	if strings.Contains(out, "Attempting to validate w/ TLS-ALPN-01") || strings.Contains(agents[0].log.String(), "use tls-alpn-01 solver") {
		t.Fatal("TLS-ALPN-01 was used with --acme-challenges http-01")
	}
	if !strings.Contains(agents[0].log.String(), "use http-01 solver") {
		t.Fatal("m1's lego did not choose the http-01 solver")
	}
	for i, a := range agents {
		n := a.metric("singularity_edge_proxy_requests_total", `pool="acme"`, `code_class="2xx"`)
		if (i == 1) != (n > 0) {
			t.Errorf("%s answered %v HTTP-01 challenge requests; want some on m2 only", a.name, n)
		}
		if n := a.metric("singularity_edge_tls_handshakes_total", `result="acme"`); n > 0 {
			t.Errorf("%s answered %v acme-tls/1 handshakes; want none", a.name, n)
		}
	}
}

// certID is the hex part of certs.CertificateID for one name.
func certID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:])[:16]
}
