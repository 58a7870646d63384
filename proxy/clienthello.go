package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// The ClientHello is read, not consumed: passthrough needs the server name
// before choosing where the raw bytes go, and termination needs it to
// refuse names whose pool is not served over TLS here. crypto/tls parses the
// same bytes again when terminating; that is once per connection.

// maxClientHello bounds the handshake message we are willing to buffer.
// Post-quantum key shares made ClientHellos grow to ~1.8 KiB; 16 KiB (one
// full record) leaves room for large extension sets and fragmented records.
const maxClientHello = 16 << 10

const (
	recordTypeHandshake       = 22
	handshakeTypeClientHello  = 1
	extensionServerName       = 0
	extensionALPN             = 16
	recordHeaderLen           = 5
	handshakeHeaderLen        = 4
	maxTLSRecordPayload       = 1<<14 + 2048 // ciphertext bound; plaintext is 1<<14
	serverNameTypeHostName    = 0
	maxALPNProtocols          = 32
	clientHelloRandomAndVer   = 2 + 32
	maxSessionIDLen           = 32
	maxServerNameLen          = 255
	alpnProtocolACME          = "acme-tls/1"
	alpnProtocolHTTP2         = "h2"
	alpnProtocolHTTP11        = "http/1.1"
	tlsRecordVersionMajorByte = 3
)

// errClientHello is wrapped by every ClientHello parse failure.
var errClientHello = errors.New("malformed TLS ClientHello")

// clientHelloInfo is what routing needs from a ClientHello.
type clientHelloInfo struct {
	// ServerName is the SNI host name, lower-cased, without a trailing dot;
	// "" when the client sent none.
	ServerName string
	// ALPN lists the offered application protocols in client order.
	ALPN []string
}

func (h *clientHelloInfo) offersALPN(proto string) bool {
	for _, p := range h.ALPN {
		if p == proto {
			return true
		}
	}
	return false
}

func helloErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errClientHello, fmt.Sprintf(format, args...))
}

// parseClientHello parses the TLS records at the start of b up to the end
// of the first handshake message, which must be a ClientHello (it may span
// several records). It returns the parsed fields and the number of bytes of
// b the records occupy, errNeedMore when b is a valid but incomplete prefix,
// or an error wrapping errClientHello.
func parseClientHello(b []byte) (clientHelloInfo, int, error) {
	// Reassemble the handshake message from as many records as it takes.
	var (
		msg      []byte // handshake bytes gathered so far (aliases b when one record suffices)
		consumed int
		copied   bool
	)
	for {
		rest := b[consumed:]
		if len(rest) < recordHeaderLen {
			return clientHelloInfo{}, 0, errNeedMore
		}
		if rest[0] != recordTypeHandshake {
			return clientHelloInfo{}, 0, helloErrorf("record type %d, want handshake", rest[0])
		}
		if rest[1] != tlsRecordVersionMajorByte {
			return clientHelloInfo{}, 0, helloErrorf("record version %d.%d", rest[1], rest[2])
		}
		n := int(binary.BigEndian.Uint16(rest[3:5]))
		if n == 0 || n > maxTLSRecordPayload {
			return clientHelloInfo{}, 0, helloErrorf("record length %d", n)
		}
		if len(rest) < recordHeaderLen+n {
			return clientHelloInfo{}, 0, errNeedMore
		}
		payload := rest[recordHeaderLen : recordHeaderLen+n]
		consumed += recordHeaderLen + n
		switch {
		case msg == nil:
			msg = payload
		case !copied:
			msg = append(append(make([]byte, 0, len(msg)+len(payload)), msg...), payload...)
			copied = true
		default:
			msg = append(msg, payload...)
		}
		if len(msg) < handshakeHeaderLen {
			continue
		}
		if msg[0] != handshakeTypeClientHello {
			return clientHelloInfo{}, 0, helloErrorf("handshake type %d, want ClientHello", msg[0])
		}
		bodyLen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if bodyLen > maxClientHello {
			return clientHelloInfo{}, 0, helloErrorf("ClientHello of %d bytes exceeds %d", bodyLen, maxClientHello)
		}
		if len(msg) < handshakeHeaderLen+bodyLen {
			continue
		}
		info, err := parseClientHelloBody(msg[handshakeHeaderLen : handshakeHeaderLen+bodyLen])
		if err != nil {
			return clientHelloInfo{}, 0, err
		}
		return info, consumed, nil
	}
}

// helloReader walks a byte slice with bounds checks.
type helloReader struct {
	b   []byte
	bad bool
}

func (r *helloReader) bytes(n int) []byte {
	if r.bad || n < 0 || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *helloReader) u8() int {
	v := r.bytes(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (r *helloReader) u16() int {
	v := r.bytes(2)
	if v == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(v))
}

// vec8 and vec16 read a length-prefixed vector.
func (r *helloReader) vec8() []byte  { return r.bytes(r.u8()) }
func (r *helloReader) vec16() []byte { return r.bytes(r.u16()) }

func parseClientHelloBody(body []byte) (clientHelloInfo, error) {
	r := helloReader{b: body}
	r.bytes(clientHelloRandomAndVer) // legacy_version, random
	if sid := r.vec8(); len(sid) > maxSessionIDLen {
		return clientHelloInfo{}, helloErrorf("session id of %d bytes", len(sid))
	}
	if cs := r.vec16(); len(cs) == 0 || len(cs)%2 != 0 {
		if !r.bad {
			return clientHelloInfo{}, helloErrorf("cipher suites of %d bytes", len(cs))
		}
	}
	if cm := r.vec8(); len(cm) == 0 && !r.bad {
		return clientHelloInfo{}, helloErrorf("no compression methods")
	}
	if r.bad {
		return clientHelloInfo{}, helloErrorf("truncated ClientHello")
	}
	var info clientHelloInfo
	if len(r.b) == 0 {
		return info, nil // no extensions (SSLv3-style hello): no SNI, no ALPN
	}
	exts := helloReader{b: r.vec16()}
	if r.bad {
		return clientHelloInfo{}, helloErrorf("truncated extensions")
	}
	if len(r.b) != 0 {
		return clientHelloInfo{}, helloErrorf("%d trailing bytes after extensions", len(r.b))
	}
	var seenSNI, seenALPN bool
	for len(exts.b) > 0 {
		typ := exts.u16()
		data := exts.vec16()
		if exts.bad {
			return clientHelloInfo{}, helloErrorf("truncated extension")
		}
		switch typ {
		case extensionServerName:
			if seenSNI {
				return clientHelloInfo{}, helloErrorf("duplicate server_name extension")
			}
			seenSNI = true
			name, err := parseServerNameExtension(data)
			if err != nil {
				return clientHelloInfo{}, err
			}
			info.ServerName = name
		case extensionALPN:
			if seenALPN {
				return clientHelloInfo{}, helloErrorf("duplicate ALPN extension")
			}
			seenALPN = true
			protos, err := parseALPNExtension(data)
			if err != nil {
				return clientHelloInfo{}, err
			}
			info.ALPN = protos
		}
	}
	return info, nil
}

func parseServerNameExtension(data []byte) (string, error) {
	r := helloReader{b: data}
	list := helloReader{b: r.vec16()}
	if r.bad || len(r.b) != 0 {
		return "", helloErrorf("malformed server_name extension")
	}
	var name string
	for len(list.b) > 0 {
		typ := list.u8()
		v := list.vec16()
		if list.bad {
			return "", helloErrorf("malformed server_name list")
		}
		if typ != serverNameTypeHostName {
			continue // unknown name types are skipped, as crypto/tls does
		}
		if name != "" {
			return "", helloErrorf("several host names in server_name")
		}
		if len(v) == 0 || len(v) > maxServerNameLen {
			return "", helloErrorf("server name of %d bytes", len(v))
		}
		for _, c := range v {
			// Host names are ASCII letters, digits, '-', '.', and '_' is
			// tolerated (seen in the wild); anything else cannot match a
			// pool and could confuse logs.
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
				return "", helloErrorf("invalid character 0x%02x in server name", c)
			}
		}
		name = strings.TrimSuffix(strings.ToLower(string(v)), ".")
		if name == "" {
			return "", helloErrorf("empty server name")
		}
		// An empty label ("a..b", ".a", "a..") names no host: crypto/tls
		// refuses such a ClientHello too, and a routing key must be the
		// one spelling of a name.
		if name[0] == '.' || name[len(name)-1] == '.' || strings.Contains(name, "..") {
			return "", helloErrorf("empty label in server name %q", name)
		}
	}
	return name, nil
}

func parseALPNExtension(data []byte) ([]string, error) {
	r := helloReader{b: data}
	list := helloReader{b: r.vec16()}
	if r.bad || len(r.b) != 0 || len(list.b) == 0 {
		return nil, helloErrorf("malformed ALPN extension")
	}
	var protos []string
	for len(list.b) > 0 {
		p := list.vec8()
		if list.bad || len(p) == 0 {
			return nil, helloErrorf("malformed ALPN protocol list")
		}
		if len(protos) == maxALPNProtocols {
			return nil, helloErrorf("more than %d ALPN protocols", maxALPNProtocols)
		}
		protos = append(protos, string(p))
	}
	return protos, nil
}
