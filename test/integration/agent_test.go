package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCLIManagesARunningAgent(t *testing.T) {
	t.Parallel()
	token := newToken(t)
	a := startAgent(t, agentOptions{token: token})
	b1 := startBackend(t, "b1", nil)
	b2 := startBackend(t, "b2", nil)

	if out, errOut, code := a.cli(token, "pools", "create", "web", "--algorithm", "round_robin", "--host", "web.test"); code != 0 {
		t.Fatalf("pools create: exit %d\n%s%s", code, out, errOut)
	}
	for _, b := range []*backend{b1, b2} {
		if out, errOut, code := a.cli(token, "backends", "add", "web", b.url()); code != 0 {
			t.Fatalf("backends add: exit %d\n%s%s", code, out, errOut)
		}
	}

	client := &http.Client{Timeout: 5 * time.Second}
	seen := map[string]int{}
	waitFor(t, 10*time.Second, "both backends to receive traffic", func() bool {
		_, name := proxyGet(t, client, a.http, "web.test")
		seen[name]++
		return seen["b1"] > 0 && seen["b2"] > 0
	})

	out, _, code := a.cli(token, "pools", "list", "--output", "json")
	if code != 0 || !contains(out, `"web"`) {
		t.Fatalf("pools list -o json: exit %d, output %s", code, out)
	}
	out, _, code = a.cli(token, "backends", "list", "web")
	if code != 0 || !contains(out, b1.ln.Addr().String()) || !contains(out, b2.ln.Addr().String()) {
		t.Fatalf("backends list: exit %d, output %s", code, out)
	}

	// Every failure has its own exit code and a sentence on stderr.
	cases := []struct {
		name     string
		token    string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"unknown algorithm", token, []string{"pools", "create", "bad", "--algorithm", "fastest"}, 3, "algorithm"},
		{"port out of range", token, []string{"backends", "add", "web", "--host", "127.0.0.1", "--port", "70000"}, 3, "port"},
		{"duplicate pool", token, []string{"pools", "create", "web"}, 5, "web"},
		{"missing pool", token, []string{"pools", "get", "nope"}, 4, "nope"},
		{"backend of missing pool", token, []string{"backends", "add", "nope", "http://127.0.0.1:1"}, 4, "nope"},
		{"wrong token", "wrong", []string{"pools", "list"}, 6, "token"},
	}
	for _, tc := range cases {
		_, errOut, code := a.cli(tc.token, tc.args...)
		if code != tc.wantCode || !strings.Contains(strings.ToLower(errOut), tc.wantErr) {
			t.Errorf("%s: exit %d (want %d), stderr %q (want it to mention %q)", tc.name, code, tc.wantCode, errOut, tc.wantErr)
		}
	}
	if _, _, code := a.cli(token, "pools", "get", "bad"); code != 4 {
		t.Errorf("a rejected create stored the pool anyway (get exit %d)", code)
	}

	// Removing a backend takes it out of rotation.
	var list struct {
		Items []struct {
			ID   string `json:"id"`
			Port int    `json:"port"`
		} `json:"items"`
	}
	out, _, _ = a.cli(token, "backends", "list", "web", "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("backends list -o json: %v\n%s", err, out)
	}
	b1Port := b1.ln.Addr().(*net.TCPAddr).Port
	for _, item := range list.Items {
		if item.Port == b1Port {
			if _, errOut, code := a.cli(token, "backends", "remove", "web", item.ID); code != 0 {
				t.Fatalf("backends remove: exit %d: %s", code, errOut)
			}
		}
	}
	waitFor(t, 5*time.Second, "b1 to leave the rotation", func() bool {
		for i := 0; i < 10; i++ {
			if _, name := proxyGet(t, client, a.http, "web.test"); name != "b2" {
				return false
			}
		}
		return true
	})
}

func TestCLIReportsUnreachableAgent(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(binary, "pools", "list", "--api", "http://"+freeAddr(t))
	cmd.Env = append(os.Environ(), "EDGE_ADMIN_TOKEN=x")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("want exit code 7 for an unreachable agent, got %v: %s", err, out)
	}
}

func TestDeadBackendLeavesRotation(t *testing.T) {
	t.Parallel()
	token := newToken(t)
	a := startAgent(t, agentOptions{token: token})
	b1 := startBackend(t, "b1", nil)
	b2 := startBackend(t, "b2", nil)
	pool := map[string]any{
		"name": "hc", "hosts": []string{"hc.test"}, "algorithm": "round_robin",
		"health_check_interval": 1000,
		"health_check":          map[string]any{"type": "http", "path": "/", "timeout": 500, "rise": 1, "fall": 2},
	}
	if code := a.api(token, "POST", "/api/pools", pool, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	for _, b := range []*backend{b1, b2} {
		if code := a.api(token, "POST", "/api/pools/hc/backends", map[string]any{"url": b.url()}, nil); code != http.StatusCreated {
			t.Fatalf("add backend: %d", code)
		}
	}
	client := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, 10*time.Second, "traffic through the pool", func() bool {
		code, _ := proxyGet(t, client, a.http, "hc.test")
		return code == http.StatusOK
	})

	b1.close()
	// Within the health window (interval x fall + timeout) b1 is out; from
	// then on every request succeeds on b2.
	waitFor(t, 15*time.Second, "the dead backend to be marked unhealthy", func() bool {
		var got struct {
			Items []struct {
				Port    int   `json:"port"`
				Healthy *bool `json:"healthy"`
			} `json:"items"`
		}
		a.api(token, "GET", "/api/pools/hc/backends", nil, &got)
		for _, it := range got.Items {
			if it.Port == b1.ln.Addr().(*net.TCPAddr).Port {
				return it.Healthy != nil && !*it.Healthy
			}
		}
		return false
	})
	for i := 0; i < 20; i++ {
		code, name := proxyGet(t, client, a.http, "hc.test")
		if code != http.StatusOK || name != "b2" {
			t.Fatalf("request %d after b1 died: status %d from %q", i, code, name)
		}
	}
}

func TestAcknowledgedWritesSurviveKill(t *testing.T) {
	t.Parallel()
	token := newToken(t)
	enc := newToken(t) + newToken(t)
	dir := t.TempDir()
	a := startAgent(t, agentOptions{dataDir: dir, token: token, encKey: enc})

	// Writers create pools until the agent is killed; every 201 is an
	// acknowledged write that must survive.
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("p-%d-%d", w, i)
				body := strings.NewReader(fmt.Sprintf(`{"name": %q}`, name))
				req, _ := http.NewRequest("POST", "http://"+a.admin+"/api/pools", body)
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					return // the agent is gone
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusCreated {
					mu.Lock()
					acked = append(acked, name)
					mu.Unlock()
				}
			}
		}(w)
	}
	waitFor(t, 20*time.Second, "some acknowledged writes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 200
	})
	a.kill()
	close(stop)
	wg.Wait()

	a.start()
	for _, name := range acked {
		if code := a.api(token, "GET", "/api/pools/"+name, nil, nil); code != http.StatusOK {
			t.Fatalf("acknowledged pool %s missing after kill -9 and restart (status %d); %d acknowledged", name, code, len(acked))
		}
	}
	t.Logf("%d acknowledged writes all present after SIGKILL", len(acked))
}

func TestShutdownDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	token := newToken(t)
	a := startAgent(t, agentOptions{token: token})
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	slow := startBackend(t, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "finished")
	}))
	if code := a.api(token, "POST", "/api/pools", map[string]any{"name": "slow", "hosts": []string{"slow.test"}}, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	if code := a.api(token, "POST", "/api/pools/slow/backends", map[string]any{"url": slow.url()}, nil); code != http.StatusCreated {
		t.Fatalf("add backend: %d", code)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, 10*time.Second, "the pool to be routable", func() bool {
		code, _ := proxyGet(t, client, a.http, "slow.test")
		return code == http.StatusOK
	})
	client.CloseIdleConnections()

	result := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+a.http+"/slow", nil)
		req.Host = "slow.test"
		resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			result <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		result <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the backend")
	}
	exited := a.terminate()
	// New connections are refused while the old request drains.
	waitFor(t, 5*time.Second, "the listener to close", func() bool {
		c, err := net.DialTimeout("tcp", a.http, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	close(release)
	if got := <-result; got != "200 finished" {
		t.Fatalf("in-flight request during shutdown: %s", got)
	}
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not exit after draining")
	}
	if a.waitErr != nil {
		t.Fatalf("agent exit after SIGTERM: %v\n%s", a.waitErr, a.log.String())
	}
}

func TestUploadedCertificateTerminatesTLSAndKeyStaysSecret(t *testing.T) {
	t.Parallel()
	token := newToken(t)
	a := startAgent(t, agentOptions{token: token})
	b := startBackend(t, "tls-backend", nil)
	certPEM, keyPEM, pool := selfSignedCert(t, "secure.test")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	var outputs []string
	out, errOut, code := a.cli(token, "certs", "upload", "--cert", certFile, "--key", keyFile)
	if code != 0 {
		t.Fatalf("certs upload: exit %d: %s%s", code, out, errOut)
	}
	outputs = append(outputs, out, errOut)
	out, errOut, code = a.cli(token, "pools", "create", "secure", "--ssl-mode", "flexible", "--ssl-domain", "secure.test")
	if code != 0 {
		t.Fatalf("pools create: exit %d: %s%s", code, out, errOut)
	}
	if out, errOut, code = a.cli(token, "backends", "add", "secure", b.url()); code != 0 {
		t.Fatalf("backends add: exit %d: %s%s", code, out, errOut)
	}

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "secure.test"},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, a.https)
		},
	}}
	var body string
	waitFor(t, 10*time.Second, "HTTPS through the uploaded certificate", func() bool {
		resp, err := client.Get("https://secure.test/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		body = string(data)
		return resp.StatusCode == http.StatusOK
	})
	if !strings.HasPrefix(body, "tls-backend") {
		t.Fatalf("answer did not come from the backend: %q", body)
	}
	// Plain HTTP to a TLS pool is redirected to HTTPS.
	noRedirect := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", "http://"+a.http+"/x", nil)
	req.Host = "secure.test"
	if resp, err := noRedirect.Do(req); err != nil || resp.StatusCode/100 != 3 || !strings.HasPrefix(resp.Header.Get("Location"), "https://secure.test") {
		t.Fatalf("plain HTTP to a TLS pool: %v %+v", err, resp)
	}

	for _, args := range [][]string{{"certs", "list"}, {"certs", "list", "-o", "json"}} {
		out, errOut, _ := a.cli(token, args...)
		outputs = append(outputs, out, errOut)
	}
	var raw json.RawMessage
	a.api(token, "GET", "/api/certificates", nil, &raw)
	outputs = append(outputs, string(raw), a.log.String())
	keyBody := pemBody(keyPEM)
	for _, o := range outputs {
		if strings.Contains(o, "PRIVATE KEY") || strings.Contains(o, keyBody) {
			t.Fatalf("private key material leaked in output: %.200s", o)
		}
	}
	// At rest the key is encrypted: its PEM body is nowhere in the data dir.
	_ = filepath.Walk(a.dataDir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(path)
		if strings.Contains(string(data), keyBody) || strings.Contains(string(data), "PRIVATE KEY") {
			t.Errorf("private key in clear in %s", path)
		}
		return nil
	})

	// Restarting with another encryption key fails with a clear message.
	a.stop()
	bad := exec.Command(binary, "agent", "--data-dir", a.dataDir, "--http-addr", freeAddr(t), "--https-addr", freeAddr(t), "--admin-addr", freeAddr(t))
	bad.Env = append(os.Environ(), "EDGE_ADMIN_TOKEN="+token, "EDGE_ENCRYPTION_KEY="+newToken(t)+newToken(t))
	msg, err := bad.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "EDGE_ENCRYPTION_KEY") && !strings.Contains(strings.ToLower(string(msg)), "encryption key") {
		t.Fatalf("restart with a wrong key: err %v, output %s", err, msg)
	}
}

func TestAdminRefusesPublicAddressWithoutToken(t *testing.T) {
	t.Parallel()
	port := freeAddr(t)[len("127.0.0.1:"):]
	cmd := exec.Command(binary, "agent", "--data-dir", t.TempDir(), "--http-addr", freeAddr(t), "--https-addr", freeAddr(t), "--admin-addr", "0.0.0.0:"+port)
	cmd.Env = append(os.Environ(), "EDGE_ADMIN_TOKEN=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "EDGE_ADMIN_TOKEN") {
		t.Fatalf("agent with a public admin address and no token: err %v, output %s", err, out)
	}
}

func selfSignedCert(t *testing.T, name string) (certPEM, keyPEM []byte, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(leaf)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), pool
}

// pemBody returns a distinctive line from the middle of a PEM block.
func pemBody(p []byte) string {
	lines := strings.Split(strings.TrimSpace(string(p)), "\n")
	return lines[len(lines)/2]
}
