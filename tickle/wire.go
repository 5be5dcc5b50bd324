package tickle

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"time"
)

// Wire format limits; see the package comment for the layout.
const (
	Version       = 1
	MaxDatagram   = 1024
	MaxSenderLen  = 64
	MaxPayloadLen = 512
	TagLen        = sha256.Size
	// MinKeySize is the shortest key accepted anywhere in this package. An
	// empty or tiny key makes tags guessable; refusing it also means a Keys
	// implementation that returns an empty slice by mistake cannot let
	// forgeries through.
	MinKeySize = 16

	magic0 = 'T'
	magic1 = 'K'
	// Fixed bytes around the sender id: magic, version, type, flags, sender
	// length before it; key id, sequence, timestamp, payload length after it.
	headLen  = 6
	fixedLen = headLen + 4 + 8 + 8 + 2
	// MinDatagram is the length of a tickle with a one-byte sender id and no payload.
	MinDatagram = fixedLen + 1 + TagLen
)

// Default ports, as in DESIGN.md: the task server listens for the NS, the
// agent for its task server.
const (
	DefaultServerPort = 50123
	DefaultAgentPort  = 50124
)

// Type says what the receiver should go and fetch.
type Type uint8

const (
	WorkPending     Type = 1
	SettingsChanged Type = 2
)

// Valid reports whether t is a type this version understands.
func (t Type) Valid() bool { return t == WorkPending || t == SettingsChanged }

func (t Type) String() string {
	switch t {
	case WorkPending:
		return "work_pending"
	case SettingsChanged:
		return "settings_changed"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Tickle is one datagram's content. Parse gives an empty Payload as nil and
// Time in UTC.
type Tickle struct {
	Type    Type
	Sender  string
	KeyID   uint32
	Seq     uint64
	Time    time.Time
	Payload []byte
}

// Reason names why a datagram was dropped; it is the value of the reason
// label of tickles_dropped_total.
type Reason string

const (
	ReasonTruncated      Reason = "truncated"       // shorter than its own lengths say
	ReasonBadLength      Reason = "bad_length"      // a length out of range, trailing bytes, or over MaxDatagram
	ReasonBadMagic       Reason = "bad_magic"       // not a tickle
	ReasonUnknownVersion Reason = "unknown_version" // a version this code does not speak
	ReasonUnknownType    Reason = "unknown_type"
	ReasonBadFlags       Reason = "bad_flags" // a reserved flag bit is set
	ReasonUnknownKey     Reason = "unknown_key"
	ReasonBadMAC         Reason = "bad_mac"
	ReasonStale          Reason = "stale"  // timestamp older than the window
	ReasonFuture         Reason = "future" // timestamp further ahead than the window
	ReasonReplay         Reason = "replay" // this sender's sequence number was already accepted
	// ReasonTooOld: authentic and within the time window, but older than the
	// replay state can vouch for: more than 960 sequence numbers behind the
	// newest from its sender, or stamped at or before the Verifier's floor
	// (see Verifier).
	ReasonTooOld Reason = "too_old"
)

// Reasons lists every Reason, so metrics can create each label value at 0.
var Reasons = []Reason{
	ReasonTruncated, ReasonBadLength, ReasonBadMagic, ReasonUnknownVersion,
	ReasonUnknownType, ReasonBadFlags, ReasonUnknownKey, ReasonBadMAC,
	ReasonStale, ReasonFuture, ReasonReplay, ReasonTooOld,
}

// DropError is the error for a datagram that must be dropped.
type DropError struct {
	Reason Reason
	Detail string
}

func (e *DropError) Error() string {
	if e.Detail == "" {
		return "tickle: " + string(e.Reason)
	}
	return "tickle: " + string(e.Reason) + ": " + e.Detail
}

func drop(r Reason, format string, args ...any) *DropError {
	return &DropError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the drop reason carried by err, or "" if err is not a DropError.
func ReasonOf(err error) Reason {
	var d *DropError
	if errors.As(err, &d) {
		return d.Reason
	}
	return ""
}

// Marshal encodes t and appends its tag made with key.
func Marshal(t Tickle, key []byte) ([]byte, error) {
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("tickle: marshal: key of %d bytes, need at least %d", len(key), MinKeySize)
	}
	return appendTickle(nil, t, hmac.New(sha256.New, key))
}

// appendTickle appends the encoding of t and its tag to dst. mac must be an
// HMAC-SHA256 keyed for t's key; it is reset before use, so callers can keep
// one per key and avoid rebuilding its padded key blocks each time.
func appendTickle(dst []byte, t Tickle, mac hash.Hash) ([]byte, error) {
	if err := checkTickle(t); err != nil {
		return nil, err
	}
	start := len(dst)
	dst = appendBody(dst, t)
	mac.Reset()
	mac.Write(dst[start:])
	return mac.Sum(dst), nil
}

func checkTickle(t Tickle) error {
	switch {
	case !t.Type.Valid():
		return fmt.Errorf("tickle: marshal: unknown type %d", uint8(t.Type))
	case len(t.Sender) == 0 || len(t.Sender) > MaxSenderLen:
		return fmt.Errorf("tickle: marshal: sender id of %d bytes, want 1..%d", len(t.Sender), MaxSenderLen)
	case len(t.Payload) > MaxPayloadLen:
		return fmt.Errorf("tickle: marshal: payload of %d bytes, want at most %d", len(t.Payload), MaxPayloadLen)
	case !time.Unix(0, t.Time.UnixNano()).Equal(t.Time):
		// UnixNano is undefined outside about 1678..2262, the zero Time included.
		return fmt.Errorf("tickle: marshal: time %v not representable in Unix nanoseconds", t.Time)
	}
	return nil
}

// appendBody appends everything but the tag; t must have passed checkTickle.
func appendBody(dst []byte, t Tickle) []byte {
	dst = append(dst, magic0, magic1, Version, byte(t.Type), 0, byte(len(t.Sender)))
	dst = append(dst, t.Sender...)
	dst = binary.BigEndian.AppendUint32(dst, t.KeyID)
	dst = binary.BigEndian.AppendUint64(dst, t.Seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(t.Time.UnixNano()))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(t.Payload)))
	return append(dst, t.Payload...)
}

// Parse decodes the structure of b without checking its tag; use a Verifier
// for anything that acts on the result. Errors are *DropError. The result
// does not alias b.
func Parse(b []byte) (Tickle, error) {
	t, _, err := parse(b)
	return t, err
}

// parse also returns the length of the authenticated part, where the tag starts.
func parse(b []byte) (Tickle, int, error) {
	if len(b) > MaxDatagram {
		return Tickle{}, 0, drop(ReasonBadLength, "datagram of %d bytes, max %d", len(b), MaxDatagram)
	}
	if len(b) < 2 {
		return Tickle{}, 0, drop(ReasonTruncated, "%d bytes", len(b))
	}
	if b[0] != magic0 || b[1] != magic1 {
		return Tickle{}, 0, drop(ReasonBadMagic, "%#02x %#02x", b[0], b[1])
	}
	if len(b) < 3 {
		return Tickle{}, 0, drop(ReasonTruncated, "%d bytes", len(b))
	}
	// Version first: a later version may lay out everything after it differently.
	if b[2] != Version {
		return Tickle{}, 0, drop(ReasonUnknownVersion, "version %d", b[2])
	}
	if len(b) < headLen {
		return Tickle{}, 0, drop(ReasonTruncated, "%d bytes", len(b))
	}
	typ := Type(b[3])
	if !typ.Valid() {
		return Tickle{}, 0, drop(ReasonUnknownType, "type %d", b[3])
	}
	if b[4] != 0 {
		return Tickle{}, 0, drop(ReasonBadFlags, "flags %#02x", b[4])
	}
	n := int(b[5])
	if n == 0 || n > MaxSenderLen {
		return Tickle{}, 0, drop(ReasonBadLength, "sender id length %d", n)
	}
	off := headLen + n
	if len(b) < off+fixedLen-headLen {
		return Tickle{}, 0, drop(ReasonTruncated, "%d bytes", len(b))
	}
	t := Tickle{Type: typ, Sender: string(b[headLen:off])}
	t.KeyID = binary.BigEndian.Uint32(b[off:])
	t.Seq = binary.BigEndian.Uint64(b[off+4:])
	t.Time = time.Unix(0, int64(binary.BigEndian.Uint64(b[off+12:]))).UTC()
	p := int(binary.BigEndian.Uint16(b[off+20:]))
	off += 22
	if p > MaxPayloadLen {
		return Tickle{}, 0, drop(ReasonBadLength, "payload length %d", p)
	}
	if len(b) < off+p+TagLen {
		return Tickle{}, 0, drop(ReasonTruncated, "%d bytes", len(b))
	}
	if extra := len(b) - (off + p + TagLen); extra > 0 {
		return Tickle{}, 0, drop(ReasonBadLength, "%d trailing bytes", extra)
	}
	if p > 0 {
		t.Payload = append([]byte(nil), b[off:off+p]...)
	}
	return t, off + p, nil
}
