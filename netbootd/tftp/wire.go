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
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// TFTP error codes (RFC 1350, RFC 2347).
const (
	codeUndefined  = 0
	codeNotFound   = 1
	codeAccess     = 2
	codeIllegalOp  = 4
	codeUnknownTID = 5
	codeOptions    = 8
)

// Option limits: RFC 2348 (blksize), RFC 2349 (timeout), RFC 7440 (windowsize).
const (
	minBlockSize  = 8
	minTimeoutOpt = 1
	maxTimeoutOpt = 255
	maxWindowSize = 64 // RFC 7440 allows 65535; past a few dozen blocks a loss costs more than the window saves
)

// option is one option of a request; the name is lower-cased, as option names are
// case-insensitive.
type option struct{ name, value string }

// request is a parsed RRQ or WRQ.
type request struct {
	op   uint16
	file string
	mode string // lower-cased: octet or netascii
	opts []option
}

// option returns the value of the named option, if the request has it.
func (r request) option(name string) (string, bool) {
	for _, o := range r.opts {
		if o.name == name {
			return o.value, true
		}
	}
	return "", false
}

// parseRequest decodes a read or write request: opcode, file name, mode and options,
// each NUL-terminated. Options come in name/value pairs; an empty name ends them, since
// some PXE ROMs pad their requests with zero bytes. A repeated option keeps its first value.
// The file name is returned as sent, even empty: it is for resolve to refuse.
func parseRequest(b []byte) (request, error) {
	if len(b) < 2 {
		return request{}, errors.New("packet shorter than an opcode")
	}
	req := request{op: binary.BigEndian.Uint16(b)}
	if req.op != opRRQ && req.op != opWRQ {
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
			req.opts = append(req.opts, option{name, value})
		}
	}
	return req, nil
}

// appendOACK appends an option acknowledgement carrying opts.
func appendOACK(dst []byte, opts []option) []byte {
	dst = binary.BigEndian.AppendUint16(dst, opOACK)
	for _, o := range opts {
		dst = append(append(dst, o.name...), 0)
		dst = append(append(dst, o.value...), 0)
	}
	return dst
}

// appendError appends an ERROR packet.
func appendError(dst []byte, code uint16, msg string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, opERROR)
	dst = binary.BigEndian.AppendUint16(dst, code)
	return append(append(dst, msg...), 0)
}

// parseReply decodes what a client sends during a transfer: an ACK (its block
// number) or an ERROR (its code and message). ok is false for anything else.
func parseReply(b []byte) (op, block uint16, msg string, ok bool) {
	if len(b) < 4 {
		return 0, 0, "", false
	}
	op = binary.BigEndian.Uint16(b)
	switch op {
	case opACK:
		return op, binary.BigEndian.Uint16(b[2:]), "", true
	case opERROR:
		m := b[4:]
		if i := bytes.IndexByte(m, 0); i >= 0 {
			m = m[:i]
		}
		return op, binary.BigEndian.Uint16(b[2:]), string(m), true
	}
	return op, 0, "", false
}

// negotiated is what a read transfer runs with after option negotiation.
type negotiated struct {
	blockSize int
	window    int
	timeout   int // seconds the client asked for; 0 keeps the server's
	accepted  []option
	capped    []string // options asked beyond a cap: lowered (blksize, windowsize) or left out (timeout)
}

// limits are the caps negotiation applies to a client's options.
type limits struct {
	maxBlock   int // largest blksize
	maxTimeout int // largest timeout option, in seconds
}

// negotiate picks the options to grant for a read request of a file of size bytes.
// Values out of range leave their option out of the acknowledgement, which then runs
// with the default (RFC 2347). blksize and windowsize above their cap are lowered to it;
// a timeout above its cap is left out, since RFC 2349 has the server acknowledge the
// client's value or none.
func negotiate(req request, size int64, lim limits) negotiated {
	n := negotiated{blockSize: 512, window: 1}
	for _, o := range req.opts {
		v, err := strconv.Atoi(o.value)
		switch o.name {
		case "blksize":
			if err != nil || v < minBlockSize {
				continue
			}
			if v > lim.maxBlock {
				n.capped = append(n.capped, "blksize")
			}
			n.blockSize = min(v, lim.maxBlock)
			n.accepted = append(n.accepted, option{"blksize", strconv.Itoa(n.blockSize)})
		case "tsize":
			// In a read request the client sends 0 and the server answers with the size.
			if size < 0 {
				continue
			}
			n.accepted = append(n.accepted, option{"tsize", strconv.FormatInt(size, 10)})
		case "timeout":
			if err != nil || v < minTimeoutOpt || v > maxTimeoutOpt {
				continue
			}
			if v > lim.maxTimeout {
				n.capped = append(n.capped, "timeout")
				continue
			}
			n.timeout = v
			n.accepted = append(n.accepted, option{"timeout", strconv.Itoa(v)})
		case "windowsize":
			if err != nil || v < 1 {
				continue
			}
			if v > maxWindowSize {
				n.capped = append(n.capped, "windowsize")
			}
			n.window = min(v, maxWindowSize)
			n.accepted = append(n.accepted, option{"windowsize", strconv.Itoa(n.window)})
		}
	}
	return n
}
