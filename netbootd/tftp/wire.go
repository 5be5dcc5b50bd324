package tftp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	tftpOpRRQ   = 1
	tftpOpWRQ   = 2
	tftpOpDATA  = 3
	tftpOpACK   = 4
	tftpOpERROR = 5
	tftpOpOACK  = 6
)

// TFTP error codes (RFC 1350, RFC 2347).
const (
	tftpErrUndefined  = 0
	tftpErrNotFound   = 1
	tftpErrAccess     = 2
	tftpErrIllegalOp  = 4
	tftpErrUnknownTID = 5
	tftpErrOptions    = 8
)

// Option limits: RFC 2348 (blksize), RFC 2349 (timeout), RFC 7440 (windowsize).
const (
	tftpMinBlockSize  = 8
	tftpMinTimeoutOpt = 1
	tftpMaxTimeoutOpt = 255
	tftpMaxWindowSize = 64 // RFC 7440 allows 65535; past a few dozen blocks a loss costs more than the window saves
)

// tftpOption is one option of a request; the name is lower-cased, as option names are
// case-insensitive.
type tftpOption struct{ name, value string }

// tftpRequest is a parsed RRQ or WRQ.
type tftpRequest struct {
	op   uint16
	file string
	mode string // lower-cased: octet or netascii
	opts []tftpOption
}

// option returns the value of the named option, if the request has it.
func (r tftpRequest) option(name string) (string, bool) {
	for _, o := range r.opts {
		if o.name == name {
			return o.value, true
		}
	}
	return "", false
}

// parseTFTPRequest decodes a read or write request: opcode, file name, mode and options,
// each NUL-terminated. Options come in name/value pairs; an empty name ends them, since
// some PXE ROMs pad their requests with zero bytes. A repeated option keeps its first value.
// The file name is returned as sent, even empty: it is for tftpResolve to refuse.
func parseTFTPRequest(b []byte) (tftpRequest, error) {
	if len(b) < 2 {
		return tftpRequest{}, errors.New("packet shorter than an opcode")
	}
	req := tftpRequest{op: binary.BigEndian.Uint16(b)}
	if req.op != tftpOpRRQ && req.op != tftpOpWRQ {
		return req, fmt.Errorf("opcode %d is not a request", req.op)
	}
	rest := b[2:]
	field := func() (string, bool) {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return "", false
		}
		s := string(rest[:i])
		rest = rest[i+1:]
		return s, true
	}
	var ok bool
	if req.file, ok = field(); !ok {
		return req, errors.New("file name not terminated")
	}
	mode, ok := field()
	if !ok {
		return req, errors.New("mode missing or not terminated")
	}
	req.mode = strings.ToLower(mode)
	switch req.mode {
	case "octet", "netascii":
	default:
		return req, fmt.Errorf("transfer mode %q not supported", mode)
	}
	for len(rest) > 0 {
		name, ok := field()
		if !ok || name == "" {
			break // unterminated trailer or padding
		}
		value, ok := field()
		if !ok {
			break
		}
		name = strings.ToLower(name)
		if _, dup := req.option(name); !dup {
			req.opts = append(req.opts, tftpOption{name, value})
		}
	}
	return req, nil
}

// tftpAppendOACK appends an option acknowledgement carrying opts.
func tftpAppendOACK(dst []byte, opts []tftpOption) []byte {
	dst = binary.BigEndian.AppendUint16(dst, tftpOpOACK)
	for _, o := range opts {
		dst = append(append(dst, o.name...), 0)
		dst = append(append(dst, o.value...), 0)
	}
	return dst
}

// tftpAppendError appends an ERROR packet.
func tftpAppendError(dst []byte, code uint16, msg string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, tftpOpERROR)
	dst = binary.BigEndian.AppendUint16(dst, code)
	return append(append(dst, msg...), 0)
}

// tftpParseReply decodes what a client sends during a transfer: an ACK (its block
// number) or an ERROR (its code and message). ok is false for anything else.
func tftpParseReply(b []byte) (op, block uint16, msg string, ok bool) {
	if len(b) < 4 {
		return 0, 0, "", false
	}
	op = binary.BigEndian.Uint16(b)
	switch op {
	case tftpOpACK:
		return op, binary.BigEndian.Uint16(b[2:]), "", true
	case tftpOpERROR:
		m := b[4:]
		if i := bytes.IndexByte(m, 0); i >= 0 {
			m = m[:i]
		}
		return op, binary.BigEndian.Uint16(b[2:]), string(m), true
	}
	return op, 0, "", false
}

// tftpNegotiated is what a read transfer runs with after option negotiation.
type tftpNegotiated struct {
	blockSize int
	window    int
	timeout   int // seconds the client asked for; 0 keeps the server's
	accepted  []tftpOption
}

// tftpNegotiate picks the options to grant for a read request of a file of size bytes,
// with blksize capped at maxBlock. Values out of range leave their option out of the
// acknowledgement, which then runs with the default (RFC 2347).
func tftpNegotiate(req tftpRequest, size int64, maxBlock int) tftpNegotiated {
	n := tftpNegotiated{blockSize: 512, window: 1}
	for _, o := range req.opts {
		v, err := strconv.Atoi(o.value)
		switch o.name {
		case "blksize":
			if err != nil || v < tftpMinBlockSize {
				continue
			}
			n.blockSize = min(v, maxBlock)
			n.accepted = append(n.accepted, tftpOption{"blksize", strconv.Itoa(n.blockSize)})
		case "tsize":
			// In a read request the client sends 0 and the server answers with the size.
			if size < 0 {
				continue
			}
			n.accepted = append(n.accepted, tftpOption{"tsize", strconv.FormatInt(size, 10)})
		case "timeout":
			if err != nil || v < tftpMinTimeoutOpt || v > tftpMaxTimeoutOpt {
				continue
			}
			n.timeout = v
			n.accepted = append(n.accepted, o)
		case "windowsize":
			if err != nil || v < 1 {
				continue
			}
			n.window = min(v, tftpMaxWindowSize)
			n.accepted = append(n.accepted, tftpOption{"windowsize", strconv.Itoa(n.window)})
		}
	}
	return n
}
