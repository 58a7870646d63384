package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
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
