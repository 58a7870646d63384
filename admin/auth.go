package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// ErrExposed is returned by CheckExposure for a non-loopback admin address
// without a token.
var ErrExposed = errors.New("admin API on a non-loopback address without a token")

// CheckExposure refuses an admin listener that other machines can reach
// unless a token protects it. addr is a listen address (host:port); an empty
// host, 0.0.0.0 and :: listen on every interface and count as exposed. Only
// "localhost" and loopback IPs are loopback: any other host name could
// resolve to a public address.
func CheckExposure(addr, token string) error {
	if token != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin address %q: %w", addr, err)
	}
	if !isLoopbackHost(host) {
		return fmt.Errorf("%w: %q is reachable from other machines; set EDGE_ADMIN_TOKEN or listen on 127.0.0.1", ErrExposed, addr)
	}
	return nil
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	if err != nil {
		return false
	}
	return ip.Unmap().IsLoopback()
}

// isLoopbackAddr reports whether a net.Addr (a connection's local address)
// is a loopback address.
func isLoopbackAddr(a net.Addr) bool {
	if a == nil {
		return false
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		host, _, serr := net.SplitHostPort(a.String())
		if serr != nil {
			return false
		}
		return isLoopbackHost(host)
	}
	return ap.Addr().Unmap().IsLoopback()
}

// tokenChecker compares bearer tokens in constant time. Both sides are
// hashed first so that the comparison also hides the token's length.
type tokenChecker struct {
	sum     [sha256.Size]byte
	enabled bool
}

func newTokenChecker(token string) tokenChecker {
	if token == "" {
		return tokenChecker{}
	}
	return tokenChecker{sum: sha256.Sum256([]byte(token)), enabled: true}
}

// check returns nil when the request carries the token, or when no token is
// configured (CheckExposure allows that on loopback addresses only).
func (t tokenChecker) check(r *http.Request) error {
	if !t.enabled {
		return nil
	}
	h := r.Header.Get("Authorization")
	scheme, cred, ok := strings.Cut(h, " ")
	if h == "" {
		return &apiError{Status: http.StatusUnauthorized, Code: CodeUnauthorized,
			Message: "missing Authorization header; send Authorization: Bearer <EDGE_ADMIN_TOKEN>"}
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return &apiError{Status: http.StatusUnauthorized, Code: CodeUnauthorized,
			Message: "the Authorization header must use the Bearer scheme"}
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(cred)))
	if subtle.ConstantTimeCompare(got[:], t.sum[:]) != 1 {
		return &apiError{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: "invalid token"}
	}
	return nil
}

// checkLocalCaller guards what is open only because the listener is on
// loopback: the whole API when no token is configured, and /metrics on a
// loopback connection. "Only local processes reach it" does not hold for a
// browser on the same machine, which any web page can drive:
//
//   - DNS rebinding: a page on attacker.example whose name later resolves
//     to 127.0.0.1 reads and writes the API as its own origin. The browser
//     still sends Host: attacker.example, so a Host that does not name the
//     loopback interface is refused.
//   - Cross-site requests: a page can send "simple" POSTs (no body, a form,
//     multipart) without a CORS preflight; it cannot read the answer, but
//     the write happens. Browsers mark such requests with Sec-Fetch-Site
//     and Origin, so those that are not same-origin are refused.
//
// The Host's port is not compared with the listener's: a browser sends the
// port it connected to, which is the listener's unless a local forwarder
// (ssh -L 9000:127.0.0.1:4000) sits between, and no page can make a
// browser send a loopback Host for another origin's request; the Origin
// check covers pages on other local ports.
//
// With a token none of this is needed, which is why it does not apply: a
// browser adds an Authorization header only to a request that passed a
// CORS preflight, which this server never grants, and a rebound page does
// not know the token. Requests with neither Origin nor Sec-Fetch-Site (the
// CLI, curl, Prometheus) are not from a browser page and pass the origin
// checks; the dashboard's calls are same-origin and pass them too.
func checkLocalCaller(r *http.Request) error {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if !isLoopbackHost(host) {
		return &apiError{Status: http.StatusForbidden, Code: CodeForbidden,
			Message: fmt.Sprintf("Host %q does not name this machine's loopback interface: without a token (EDGE_ADMIN_TOKEN) only requests addressed to localhost, 127.0.0.1 or [::1] are answered, so that a web page whose name resolves to 127.0.0.1 cannot use the API", r.Host)}
	}
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "", "same-origin", "none":
	default:
		return &apiError{Status: http.StatusForbidden, Code: CodeForbidden,
			Message: fmt.Sprintf("cross-origin browser request refused (Sec-Fetch-Site: %s): without a token (EDGE_ADMIN_TOKEN) only the dashboard served here and non-browser clients are answered", site)}
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return &apiError{Status: http.StatusForbidden, Code: CodeForbidden,
				Message: fmt.Sprintf("cross-origin browser request refused (Origin %q, Host %q): without a token (EDGE_ADMIN_TOKEN) only the dashboard served here and non-browser clients are answered", origin, r.Host)}
		}
	}
	return nil
}
