package admin

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// dashboardHTML is the whole dashboard: markup, CSS and vanilla JS in one
// file, no external resources and no build step.
//
//go:embed dashboard.html
var dashboardHTML string

// dashboardPage is the page with the Content-Security-Policy that allows
// exactly its own inline script and style (by hash) and API calls to this
// origin, nothing else.
type dashboardPage struct {
	body []byte
	csp  string
}

func newDashboardPage() (dashboardPage, error) {
	page := []byte(dashboardHTML)
	script, err := inlineBlock(page, "<script>", "</script>")
	if err != nil {
		return dashboardPage{}, err
	}
	style, err := inlineBlock(page, "<style>", "</style>")
	if err != nil {
		return dashboardPage{}, err
	}
	csp := strings.Join([]string{
		"default-src 'none'",
		"script-src " + cspHash(script),
		"style-src " + cspHash(style),
		"connect-src 'self'",
		"img-src 'self' data:",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
	}, "; ")
	return dashboardPage{body: page, csp: csp}, nil
}

// inlineBlock returns the text between the only open and close tag.
func inlineBlock(page []byte, open, close string) ([]byte, error) {
	if bytes.Count(page, []byte(open)) != 1 {
		return nil, fmt.Errorf("admin: dashboard must have exactly one %s block", open)
	}
	start := bytes.Index(page, []byte(open)) + len(open)
	end := bytes.Index(page[start:], []byte(close))
	if end < 0 {
		return nil, errors.New("admin: dashboard block " + open + " is not closed")
	}
	return page[start : start+end], nil
}

func cspHash(b []byte) string {
	sum := sha256.Sum256(b)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// handleDashboard serves the page without authentication: it carries no
// data. It asks for the token and sends it with every API call (see the
// comment at the top of its script for why sessionStorage and not a cookie
// or ?token=).
func (s *Server) handleDashboard(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", s.page.csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(s.page.body)
}
