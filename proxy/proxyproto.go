package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// PROXY protocol (HAProxy's spec, versions 1 and 2), as sent by Fly.io's
// `proxy_proto` handler and by most L4 load balancers. The parser is written
// here rather than taken from github.com/pires/go-proxyproto because the
// connection handlers already own a read buffer: parsing in place from that
// buffer keeps the bytes that follow the header (the client's first TLS
// record or HTTP request, usually in the same segment) without an extra
// bufio layer or copy, and the whole parser is ~150 lines that a fuzz target
// covers completely.

// maxProxyHeaderV2 bounds a v2 header (16-byte preamble plus addresses and
// TLVs). The spec allows 64 KiB of TLVs; the senders we care about (Fly,
// AWS NLB, HAProxy) send far less, and a tight bound keeps a misbehaving
// peer from making us buffer much.
const maxProxyHeaderV2 = 16 + 2048

// maxProxyHeaderV1 is the longest v1 line the spec allows, CRLF included.
const maxProxyHeaderV1 = 107

var (
	proxyV2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")
	proxyV1Prefix    = []byte("PROXY ")
)

// errNeedMore means the buffer holds an incomplete but so far valid header.
var errNeedMore = errors.New("incomplete header")

// errProxyHeader is wrapped by every PROXY protocol parse failure.
var errProxyHeader = errors.New("malformed PROXY protocol header")

// proxyHeader is what a PROXY header says about the connection. Local is
// true for v2 LOCAL commands (health checks of the sender itself) and v1
// UNKNOWN lines: the real peer address is then the TCP one.
type proxyHeader struct {
	Version int
	Local   bool
	Source  netip.AddrPort
	Dest    netip.AddrPort
}

func proxyErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProxyHeader, fmt.Sprintf(format, args...))
}

// parseProxyHeader parses a PROXY protocol header at the start of b. It
// returns the header and its length in bytes, errNeedMore when b is a
// valid but incomplete prefix, or an error wrapping errProxyHeader.
func parseProxyHeader(b []byte) (proxyHeader, int, error) {
	if len(b) == 0 {
		return proxyHeader{}, 0, errNeedMore
	}
	if b[0] == '\r' {
		return parseProxyV2(b)
	}
	if b[0] == 'P' {
		return parseProxyV1(b)
	}
	return proxyHeader{}, 0, proxyErrorf("no PROXY signature")
}

func parseProxyV1(b []byte) (proxyHeader, int, error) {
	n := min(len(b), len(proxyV1Prefix))
	if !bytes.Equal(b[:n], proxyV1Prefix[:n]) {
		return proxyHeader{}, 0, proxyErrorf("no PROXY signature")
	}
	end := bytes.IndexByte(b[:min(len(b), maxProxyHeaderV1)], '\n')
	if end < 0 {
		if len(b) >= maxProxyHeaderV1 {
			return proxyHeader{}, 0, proxyErrorf("v1 line longer than %d bytes", maxProxyHeaderV1)
		}
		return proxyHeader{}, 0, errNeedMore
	}
	if end == 0 || b[end-1] != '\r' {
		return proxyHeader{}, 0, proxyErrorf("v1 line does not end in CRLF")
	}
	line := b[len(proxyV1Prefix) : end-1]
	fields := bytes.Split(line, []byte{' '})
	h := proxyHeader{Version: 1}
	switch string(fields[0]) {
	case "UNKNOWN":
		// The sender could not tell; anything after UNKNOWN is ignored.
		h.Local = true
		return h, end + 1, nil
	case "TCP4", "TCP6":
	default:
		return proxyHeader{}, 0, proxyErrorf("v1 protocol %q", fields[0])
	}
	if len(fields) != 5 {
		return proxyHeader{}, 0, proxyErrorf("v1 line has %d fields, want 5", len(fields))
	}
	src, err := parseV1Addr(fields[1], fields[3], string(fields[0]) == "TCP4")
	if err != nil {
		return proxyHeader{}, 0, err
	}
	dst, err := parseV1Addr(fields[2], fields[4], string(fields[0]) == "TCP4")
	if err != nil {
		return proxyHeader{}, 0, err
	}
	h.Source, h.Dest = src, dst
	return h, end + 1, nil
}

func parseV1Addr(ip, port []byte, v4 bool) (netip.AddrPort, error) {
	addr, err := netip.ParseAddr(string(ip))
	if err != nil || addr.Zone() != "" || addr.Is4() != v4 {
		return netip.AddrPort{}, proxyErrorf("v1 address %q", ip)
	}
	// Ports are decimal without sign or leading zeros ("0" itself is fine).
	if len(port) == 0 || len(port) > 5 || (len(port) > 1 && port[0] == '0') {
		return netip.AddrPort{}, proxyErrorf("v1 port %q", port)
	}
	p, err := strconv.ParseUint(string(port), 10, 16)
	if err != nil {
		return netip.AddrPort{}, proxyErrorf("v1 port %q", port)
	}
	return netip.AddrPortFrom(addr, uint16(p)), nil
}

func parseProxyV2(b []byte) (proxyHeader, int, error) {
	n := min(len(b), len(proxyV2Signature))
	if !bytes.Equal(b[:n], proxyV2Signature[:n]) {
		return proxyHeader{}, 0, proxyErrorf("no PROXY signature")
	}
	if len(b) < 16 {
		return proxyHeader{}, 0, errNeedMore
	}
	verCmd, fam := b[12], b[13]
	if verCmd>>4 != 2 {
		return proxyHeader{}, 0, proxyErrorf("v2 version %d", verCmd>>4)
	}
	total := 16 + int(binary.BigEndian.Uint16(b[14:16]))
	if total > maxProxyHeaderV2 {
		return proxyHeader{}, 0, proxyErrorf("v2 header of %d bytes exceeds %d", total, maxProxyHeaderV2)
	}
	h := proxyHeader{Version: 2}
	switch verCmd & 0x0f {
	case 0: // LOCAL: the sender's own connection; addresses are ignored
		h.Local = true
	case 1: // PROXY
	default:
		return proxyHeader{}, 0, proxyErrorf("v2 command %d", verCmd&0x0f)
	}
	if len(b) < total {
		return proxyHeader{}, 0, errNeedMore
	}
	body := b[16:total]
	if h.Local {
		return h, total, nil
	}
	switch fam {
	case 0x11: // TCP over IPv4
		if len(body) < 12 {
			return proxyHeader{}, 0, proxyErrorf("v2 IPv4 address block of %d bytes", len(body))
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
	case 0x21: // TCP over IPv6
		if len(body) < 36 {
			return proxyHeader{}, 0, proxyErrorf("v2 IPv6 address block of %d bytes", len(body))
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])).Unmap(), binary.BigEndian.Uint16(body[32:34]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])).Unmap(), binary.BigEndian.Uint16(body[34:36]))
	case 0x00:
		// UNSPEC with PROXY: the sender does not know the addresses; keep
		// the TCP peer, like LOCAL.
		h.Local = true
	default:
		// UDP and unix sockets make no sense in front of an HTTP/TLS listener.
		return proxyHeader{}, 0, proxyErrorf("v2 address family/protocol 0x%02x", fam)
	}
	// TLVs follow the addresses; nothing in them changes routing, so they
	// are skipped (bounded by total above).
	return h, total, nil
}
