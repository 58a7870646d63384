package certs

import (
	"fmt"
	"slices"
	"strings"

	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/providers/dns/cloudflare"
	"github.com/go-acme/lego/v4/providers/dns/exec"
	"github.com/go-acme/lego/v4/providers/dns/httpreq"
)

// dnsProviders are the lego DNS providers this binary carries. lego's
// factory of all its providers (providers/dns) links the SDKs of some 180
// DNS hosts; these need nothing beyond the standard library, and exec and
// httpreq reach any other DNS host through a script or a webhook. Adding
// one is one line here and its module.
var dnsProviders = map[string]func() (challenge.Provider, error){
	"cloudflare": func() (challenge.Provider, error) { return cloudflare.NewDNSProvider() },
	"exec":       func() (challenge.Provider, error) { return exec.NewDNSProvider() },
	"httpreq":    func() (challenge.Provider, error) { return httpreq.NewDNSProvider() },
}

// DNSProviders lists the names DNSProviderFromEnv accepts.
func DNSProviders() []string {
	names := make([]string, 0, len(dnsProviders))
	for n := range dnsProviders {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// DNSProviderFromEnv returns lego's DNS-01 provider called name,
// configured from its environment variables exactly as lego documents
// them (CLOUDFLARE_DNS_API_TOKEN, EXEC_PATH, HTTPREQ_ENDPOINT, ...).
func DNSProviderFromEnv(name string) (challenge.Provider, error) {
	mk, ok := dnsProviders[strings.ToLower(name)]
	if !ok {
		return nil, fmt.Errorf("certs: DNS provider %q: want one of %s", name, strings.Join(DNSProviders(), ", "))
	}
	p, err := mk()
	if err != nil {
		return nil, fmt.Errorf("certs: DNS provider %s: %w", name, err)
	}
	return p, nil
}
