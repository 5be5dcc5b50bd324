package tftp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// errTimeLimit ends a transfer that ran past MaxTransferTime.
var errTimeLimit = errors.New("transfer time limit reached")

// clientError is an ERROR packet from the client, which ends the transfer.
type clientError struct {
	code uint16
	msg  string
}

func (e *clientError) Error() string {
	return fmt.Sprintf("client sent error %d: %q", e.code, e.msg)
}

// sender runs the data phase of one read transfer: blocks of blockSize sent window at
// a time (one for a lock-step RFC 1350 client), each window resent whole when no ACK
// comes within the timeout, up to retries times. Block numbers wrap after 65535 to 0, as
// tftp-hpa and the PXE ROMs that fetch large files expect.
//
// Until the client answers, its address is only the source of its request, which anyone
// can forge: what goes there is then held to budget bytes, spent by the first packet and
// by resends. The first packet always goes (the OACK, or DATA 1 of a plain request that
// the server chose to serve); resends that would overdraw the budget are withheld, and
// the client's own retransmission of its request or ACK recovers a loss. Once any ACK or
// ERROR arrives on the transfer's port, which only the real client learned, the address
// is proven.
type sender struct {
	conn      conn
	r         io.Reader
	blockSize int
	window    int
	retries   int
	budget    int       // bytes that may still go to the client before it answers
	deadline  time.Time // the transfer ends with errTimeLimit past it; zero: no limit
	onProven  func()    // called once, when the client first answers; may be nil

	datagrams   int   // DATA and OACK packets sent, retransmissions included
	retransmits int   // packets sent again for want of an ACK
	withheld    int   // resends not sent: the client had not answered and its budget was spent
	bytes       int64 // file bytes the client acknowledged
	reads       int   // blocks read from the file
	verified    bool  // the client has answered on the transfer's port

	slots [][]byte // the window: block k lives in slots[(k-1)%window]
	lens  []int
	in    []byte
}

// negotiate sends the option acknowledgement and waits for the client's ACK of block 0.
// An ERROR in answer is how a client declines the options, or how EDK2 ends the tsize
// query it makes before the real fetch.
func (x *sender) negotiate(oack []byte) error {
	x.in = make([]byte, 1500)
	for try := 0; ; try++ {
		if err := x.send(oack, try > 0); err != nil {
			return err
		}
		done, err := x.awaitACK(func(block uint16) bool { return block == 0 })
		if done || err != nil {
			return err
		}
		if try == x.retries {
			return fmt.Errorf("option acknowledgement: %w", errTimeout)
		}
	}
}

// send puts one packet on the wire, or withholds a resend to a client that has not
// answered yet once its budget is spent.
func (x *sender) send(p []byte, resend bool) error {
	if !x.verified {
		if x.datagrams > 0 && len(p) > x.budget {
			x.withheld++
			return nil
		}
		x.budget -= len(p)
	}
	if err := x.conn.send(p); err != nil {
		return err
	}
	x.datagrams++
	if resend {
		x.retransmits++
	}
	return nil
}

// awaitACK reads until accept takes an ACK (done), the timeout passes (not done, no error),
// or the transfer ends with an error. Other packets are ignored: a duplicate ACK must not
// trigger a resend, or both sides would go on sending everything twice (the Sorcerer's
// Apprentice bug of RFC 1350).
func (x *sender) awaitACK(accept func(block uint16) bool) (bool, error) {
	for {
		n, err := x.conn.recv(x.in)
		switch {
		case errors.Is(err, errTimeout):
			return false, nil
		case err != nil:
			return false, err
		}
		op, block, msg, ok := parseReply(x.in[:n])
		if ok && !x.verified {
			x.verified = true
			if x.onProven != nil {
				x.onProven()
			}
		}
		switch {
		case !ok:
		case op == opERROR:
			return false, &clientError{code: block, msg: msg}
		case accept(block):
			return true, nil
		}
	}
}

// run sends the file from block 1 to the end.
func (x *sender) run() error {
	if x.in == nil {
		x.in = make([]byte, 1500)
	}
	x.slots = make([][]byte, x.window)
	x.lens = make([]int, x.window)
	for i := range x.slots {
		x.slots[i] = make([]byte, 4+x.blockSize)
	}
	var acked, filled, last uint64 // blocks acknowledged, read, and the final one (0: not read yet)
	for {
		if !x.deadline.IsZero() && time.Now().After(x.deadline) {
			return fmt.Errorf("block %d: %w", acked+1, errTimeLimit)
		}
		// Read the blocks the window has room for.
		for filled < acked+uint64(x.window) && last == 0 {
			k := filled + 1
			slot := x.slots[(k-1)%uint64(x.window)]
			n, err := io.ReadFull(x.r, slot[4:])
			switch {
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				last = k // short (maybe empty) block: the end
			case err != nil:
				return err
			}
			x.reads++
			binary.BigEndian.PutUint16(slot, opDATA)
			binary.BigEndian.PutUint16(slot[2:], uint16(k))
			x.lens[(k-1)%uint64(x.window)] = 4 + n
			filled = k
		}
		base := acked
		for try := 0; ; try++ {
			for k := base + 1; k <= filled; k++ {
				i := (k - 1) % uint64(x.window)
				if err := x.send(x.slots[i][:x.lens[i]], try > 0); err != nil {
					return err
				}
			}
			// An ACK for any block sent and not yet acknowledged moves the window there
			// (RFC 7440: the next window starts after it).
			done, err := x.awaitACK(func(block uint16) bool {
				d := uint64(block - uint16(base))
				if d == 0 || d > filled-base {
					return false
				}
				acked = base + d
				return true
			})
			if err != nil {
				return err
			}
			if done {
				break
			}
			if try == x.retries {
				return fmt.Errorf("block %d: %w", base+1, errTimeout)
			}
		}
		for k := base + 1; k <= acked; k++ {
			x.bytes += int64(x.lens[(k-1)%uint64(x.window)] - 4)
		}
		if last != 0 && acked == last {
			return nil
		}
	}
}

// netascii converts a file to netascii as it is read (RFC 1350's mode for text): LF
// becomes CR LF and a lone CR becomes CR NUL.
type netascii struct {
	r       io.Reader
	buf     [4096]byte
	pending []byte // converted bytes not yet returned
	out     []byte
}

func (n *netascii) Read(p []byte) (int, error) {
	for len(n.pending) == 0 {
		k, err := n.r.Read(n.buf[:])
		if k == 0 && err != nil {
			return 0, err
		}
		n.out = n.out[:0]
		for _, c := range n.buf[:k] {
			switch c {
			case '\n':
				n.out = append(n.out, '\r', '\n')
			case '\r':
				n.out = append(n.out, '\r', 0)
			default:
				n.out = append(n.out, c)
			}
		}
		n.pending = n.out
	}
	k := copy(p, n.pending)
	n.pending = n.pending[k:]
	return k, nil
}
