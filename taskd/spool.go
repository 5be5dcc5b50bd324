package taskd

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/siteserver/siteserver/nsapi"
)

// On-disk layout of a spool directory:
//
//	seg-<16 hex digits>.log  records; the digits are the sequence number of its first record
//	ack                      16 hex digits and a newline: the last acknowledged sequence number
//
// A record is [4-byte length][4-byte CRC32C][JSON of one nsapi.Event], little endian. The CRC
// covers the length bytes too, so a damaged length is caught even when it still points
// inside the file. Sequence numbers are not stored in records: a record's number is its
// segment's first number plus its index. Records skipped as damaged in one segment
// therefore leave a gap in the numbers instead of shifting those of later segments.
const (
	segmentRollBytes = 8 << 20
	// Far above the largest valid event (64 KiB of output, escaped), so only a damaged
	// length reaches it; a scan never allocates more than this for one record.
	maxRecordBytes = 1 << 20
	recordHeader   = 8
	ackName        = "ack"
	ackTempName    = "ack.tmp"
	segmentPrefix  = "seg-"
	segmentSuffix  = ".log"
)

// ErrSpoolClosed is returned by every Spool method called after Close.
var ErrSpoolClosed = errors.New("taskd: spool closed")

// ErrSpoolFull is returned by Append when the events would take the spool's unacknowledged
// records past its limit (SetMaxBytes). It passes as the NS takes events: try again later.
var ErrSpoolFull = errors.New("taskd: spool full: the NS has not taken the events spooled so far")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Spool keeps agent status events on disk until the NS has acknowledged them.
//
// Delivery is at least once: an event is removed only after Ack, and Ack is written after
// the NS answered, so a crash between the two sends those events again after restart.
// The NS deduplicates by event id, which makes that harmless. Within one process, Next
// always starts at the first unacknowledged event, so a Next/Ack cycle neither skips nor
// repeats one.
//
// Only the position of each segment is kept in memory, never the events. One process
// at a time may open a directory; the spool does not lock it, that is for the owner of
// the data directory to do.
type Spool struct {
	dir       string
	rollBytes int64 // segment size that starts a new one; a field so tests can roll often

	// mu guards everything below it except the fields documented otherwise. No file
	// I/O is done while holding it, so appenders queue up while a commit is on disk.
	mu     sync.Mutex
	cond   sync.Cond // on mu: the flusher left (for Close)
	closed bool

	segs    []segment // oldest first; the last one is appended to
	ackSeq  uint64    // last acknowledged sequence number, as in the ack file
	readOff int64     // in segs[0]: offset of the first unacknowledged record (or its end)
	readSeq uint64    // sequence number of the record at readOff

	// Group commit: appenders add records to pend; whoever finds no flush running
	// writes and syncs everything pending in one go, on behalf of all of them.
	nextSeq    uint64 // number of the next record added to pend
	pend       []byte
	pendN      int
	pendFirst  uint64
	pendCommit *commit
	spare      []byte // the previous pend buffer, reused
	flushing   bool
	// werr is the last failed write or sync, until the next commit has repaired what it
	// left: the file's state is unknown past the last synced record.
	werr     error
	maxBytes int64 // bound on unacknowledged record bytes; 0: none

	notify chan struct{} // closed when events become available; nil when nobody waits

	appended, acked, commits uint64
	discarded                int64
	refusedFull, refusedIO   uint64 // events refused by Append: spool full, failed write
	writeFailures, repairs   uint64 // commits that failed; repairs after them that worked

	// Owned by the flusher (flushing set) or by Close and OpenSpool.
	wf      *os.File // the segment written to, positioned at its end; nil: the next commit starts one
	wfFirst uint64   // its first sequence number

	// readMu serialises Next, Ack and Close; segments are only deleted under it, so Next
	// can read them without holding mu. rf caches the segment Next read last.
	readMu sync.Mutex
	rf     *os.File
	rfSeg  uint64

	syncs atomic.Uint64
}

type segment struct {
	first uint64 // sequence number of its first record
	count uint64 // intact records
	size  int64  // bytes of intact, synced records
}

// end is the sequence number after the segment's last record.
func (g segment) end() uint64 { return g.first + g.count }

// A commit is the records of every Append that arrived while the one before it was being
// written. Its appenders wait on done; when the writer of the commit before finishes, it
// hands the next commit to them through lead, and the first to wake writes it. Each wakes
// once or twice per commit, never once per commit written: a burst of thousands of
// appends costs thousands of wakeups, not millions.
type commit struct {
	done  chan struct{} // closed once written; err tells how
	err   error
	lead  chan struct{} // closed when its appenders are to write it themselves
	taken bool          // one of them is writing it
}

func newCommit() *commit { return &commit{done: make(chan struct{}), lead: make(chan struct{})} }

func (c *commit) written() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Cursor marks the position after a batch returned by Next; pass it to Ack.
// The zero Cursor acknowledges nothing.
type Cursor struct {
	seg  uint64 // first sequence number of the segment holding the next record
	off  int64  // offset of the next record in it
	next uint64 // sequence number of the next record
}

func segmentName(first uint64) string {
	return fmt.Sprintf("%s%016x%s", segmentPrefix, first, segmentSuffix)
}

func parseSegmentName(name string) (uint64, bool) {
	hex, ok := strings.CutPrefix(name, segmentPrefix)
	if !ok {
		return 0, false
	}
	hex, ok = strings.CutSuffix(hex, segmentSuffix)
	if !ok || len(hex) != 16 {
		return 0, false
	}
	v, err := strconv.ParseUint(hex, 16, 64)
	return v, err == nil
}

// OpenSpool opens the spool in dir, creating it if needed, and recovers from a crash.
//
// Records past the first damaged one in the last segment are cut off: Append syncs
// before it returns, so they belong to appends that never returned nil. Damage in an
// older segment cannot come from a crash (a segment is complete and synced before the
// next one is created); the records after it in that segment are skipped, the file is
// kept as it is, and the skipped bytes are counted in SpoolStats.DiscardedBytes so the
// caller can report them.
func OpenSpool(dir string) (*Spool, error) {
	s, err := openSpool(dir)
	if err != nil {
		return nil, fmt.Errorf("taskd: spool %s: %w", dir, err)
	}
	return s, nil
}

func openSpool(dir string) (*Spool, error) {
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		// A new directory's own name must be durable before a synced segment in it means anything.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return nil, err
		}
	}
	if err := os.Remove(filepath.Join(dir, ackTempName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ackSeq, err := readAck(dir)
	if err != nil {
		return nil, err
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var firsts []uint64
	for _, e := range entries {
		if first, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			firsts = append(firsts, first)
		}
	}
	slices.Sort(firsts)

	s := &Spool{dir: dir, rollBytes: segmentRollBytes, ackSeq: ackSeq}
	s.cond.L = &s.mu
	target := ackSeq + 1
	var targetOffs []int64 // per segment, from scanSegment
	for i, first := range firsts {
		path := filepath.Join(dir, segmentName(first))
		r, err := scanSegment(path, first, target)
		if err != nil {
			return nil, err
		}
		g := segment{first: first, count: r.count, size: r.valid}
		if i > 0 && first < s.segs[i-1].end() {
			return nil, fmt.Errorf("segments %s and %s overlap", segmentName(firsts[i-1]), segmentName(first))
		}
		if r.valid < r.size {
			s.discarded += r.size - r.valid
			if i == len(firsts)-1 {
				if err := truncateSync(path, r.valid); err != nil {
					return nil, err
				}
			}
		}
		s.segs = append(s.segs, g)
		targetOffs = append(targetOffs, r.targetOff)
	}

	// Delete segments that were acknowledged but not yet removed when the process stopped.
	for len(s.segs) > 1 && s.segs[0].end() <= target {
		if err := os.Remove(filepath.Join(dir, segmentName(s.segs[0].first))); err != nil {
			return nil, err
		}
		s.segs, targetOffs = s.segs[1:], targetOffs[1:]
	}

	s.nextSeq = target
	if n := len(s.segs); n > 0 {
		head := s.segs[0]
		switch {
		case head.first > ackSeq:
			s.readOff, s.readSeq = 0, head.first
		case targetOffs[0] >= 0:
			s.readOff, s.readSeq = targetOffs[0], target
		default: // acknowledged past its end: records were lost after their Ack
			s.readOff, s.readSeq = head.size, head.end()
		}
		last := s.segs[n-1]
		s.nextSeq = max(s.nextSeq, last.end())
		f, err := os.OpenFile(filepath.Join(dir, segmentName(last.first)), os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		if _, err := f.Seek(last.size, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		s.wf, s.wfFirst = f, last.first
	}
	s.pendFirst = s.nextSeq
	s.pendCommit = newCommit()
	return s, nil
}

type scanResult struct {
	count     uint64
	valid     int64 // length of the intact prefix
	size      int64
	targetOff int64 // offset of the record numbered target, or -1 if outside the intact prefix
}

// scanSegment reads a segment up to its first damaged record.
func scanSegment(path string, first, target uint64) (scanResult, error) {
	r := scanResult{targetOff: -1}
	f, err := os.Open(path)
	if err != nil {
		return r, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return r, err
	}
	r.size = st.Size()
	br := bufio.NewReaderSize(f, 1<<20)
	var hdr [recordHeader]byte
	var buf []byte
	for {
		if first+r.count == target {
			r.targetOff = r.valid
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return r, nil
			}
			return r, err
		}
		n := binary.LittleEndian.Uint32(hdr[0:4])
		if n == 0 || n > maxRecordBytes || int64(n) > r.size-r.valid-recordHeader {
			return r, nil
		}
		buf = slices.Grow(buf[:0], int(n))[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return r, nil
			}
			return r, err
		}
		if recordCRC(hdr[0:4], buf) != binary.LittleEndian.Uint32(hdr[4:8]) {
			return r, nil
		}
		r.count++
		r.valid += recordHeader + int64(n)
	}
}

func recordCRC(length, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(length, castagnoli), castagnoli, payload)
}

func appendRecord(dst, payload []byte) []byte {
	var hdr [recordHeader]byte
	binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(hdr[4:8], recordCRC(hdr[0:4], payload))
	return append(append(dst, hdr[:]...), payload...)
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		// Unsynced, the cut could be undone by another crash after the segment stopped
		// being the last one, and the damage would then look like corruption.
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func readAck(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, ackName))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s, ok := strings.CutSuffix(string(b), "\n")
	v, err := strconv.ParseUint(s, 16, 64)
	if !ok || len(s) != 16 || err != nil {
		return 0, fmt.Errorf("%s: damaged (%q); removing it makes every spooled event be sent again", ackName, b)
	}
	return v, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// Next returns up to max events from the oldest unacknowledged one on, without removing
// them, and the Cursor that acknowledges them. The events' JSON array stays within
// maxBytes, except that the first event is always returned, whatever its size, so that
// one large event cannot stall the spool. With nothing to send it returns no events and
// a zero Cursor.
//
// Calling Next again before Ack returns the same events again: a failed send is retried
// by calling Next.
func (s *Spool) Next(max, maxBytes int) ([]nsapi.Event, Cursor, error) {
	if max < 1 || maxBytes < 1 {
		return nil, Cursor{}, fmt.Errorf("taskd: spool: Next(%d, %d): limits must be positive", max, maxBytes)
	}
	s.readMu.Lock()
	defer s.readMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, Cursor{}, ErrSpoolClosed
	}
	segs := slices.Clone(s.segs)
	off, seq := s.readOff, s.readSeq
	s.mu.Unlock()

	var (
		events []nsapi.Event
		size   = 2 // the brackets of the array
		i      int
		br     *bufio.Reader
		hdr    [recordHeader]byte
		buf    []byte
	)
	for i < len(segs) && len(events) < max {
		g := segs[i]
		if off >= g.size {
			if i == len(segs)-1 {
				break
			}
			i++
			off, seq, br = 0, segs[i].first, nil
			continue
		}
		if br == nil {
			f, err := s.reader(g.first)
			if err != nil {
				return nil, Cursor{}, fmt.Errorf("taskd: spool: %w", err)
			}
			br = bufio.NewReaderSize(io.NewSectionReader(f, off, g.size-off), 256<<10)
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return nil, Cursor{}, s.readError(g, off, err)
		}
		n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
		if n > g.size-off-recordHeader {
			return nil, Cursor{}, s.readError(g, off, errors.New("record length past the end"))
		}
		add := int(n)
		if len(events) > 0 {
			add++ // the comma
		}
		if len(events) > 0 && size+add > maxBytes {
			break
		}
		buf = slices.Grow(buf[:0], int(n))[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, Cursor{}, s.readError(g, off, err)
		}
		if recordCRC(hdr[0:4], buf) != binary.LittleEndian.Uint32(hdr[4:8]) {
			return nil, Cursor{}, s.readError(g, off, errors.New("checksum mismatch"))
		}
		var e nsapi.Event
		if err := json.Unmarshal(buf, &e); err != nil {
			return nil, Cursor{}, s.readError(g, off, err)
		}
		events = append(events, e)
		size += add
		off += recordHeader + n
		seq++
	}
	if len(events) == 0 {
		return nil, Cursor{}, nil
	}
	return events, Cursor{seg: segs[i].first, off: off, next: seq}, nil
}

// readError reports damage found after OpenSpool checked the segment: the disk changed
// under the spool, which it cannot repair while running.
func (s *Spool) readError(g segment, off int64, err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("taskd: spool: %s at offset %d: %w", segmentName(g.first), off, err)
}

// reader returns a read handle on a segment; readMu is held.
func (s *Spool) reader(first uint64) (*os.File, error) {
	if s.rf != nil && s.rfSeg == first {
		return s.rf, nil
	}
	if s.rf != nil {
		s.rf.Close()
		s.rf = nil
	}
	f, err := os.Open(filepath.Join(s.dir, segmentName(first)))
	if err != nil {
		return nil, err
	}
	s.rf, s.rfSeg = f, first
	return f, nil
}

// Ack records that everything before c was delivered, deletes the segment files that
// hold nothing undelivered, then writes the ack file. A cursor at or before an earlier Ack
// is ignored. The NS has the events, so their segments go first, freeing room on a full
// disk; an ack file that cannot be written is written by a later Ack, and until then a
// restart sends some delivered events again, which the NS stores once.
func (s *Spool) Ack(c Cursor) error {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrSpoolClosed
	}
	if c.next == 0 || c.next-1 <= s.ackSeq {
		s.mu.Unlock()
		return nil
	}
	j := slices.IndexFunc(s.segs, func(g segment) bool { return g.first == c.seg })
	if j < 0 || c.off > s.segs[j].size || c.next > s.segs[j].end() {
		s.mu.Unlock()
		return errors.New("taskd: spool: Ack: cursor does not come from this spool's Next")
	}
	before := s.depthLocked()
	s.ackSeq = c.next - 1
	var drop []segment
	drop, s.segs = s.segs[:j:j], s.segs[j:]
	s.readOff, s.readSeq = c.off, c.next
	for len(s.segs) > 1 && s.readOff >= s.segs[0].size {
		drop = append(drop, s.segs[0])
		s.segs = s.segs[1:]
		s.readOff, s.readSeq = 0, s.segs[0].first
	}
	s.acked += uint64(before - s.depthLocked())
	s.mu.Unlock()

	var errs []error
	for _, g := range drop {
		if s.rf != nil && s.rfSeg == g.first {
			s.rf.Close()
			s.rf = nil
		}
		// No directory sync: a segment that reappears after a crash is deleted by
		// OpenSpool once the ack file covers it, or sent again before that.
		if err := os.Remove(filepath.Join(s.dir, segmentName(g.first))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete delivered segment: %w", err))
		}
	}
	if err := s.writeAck(c.next - 1); err != nil {
		errs = append(errs, fmt.Errorf("write ack file: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("taskd: spool: %w", err)
	}
	return nil
}

func (s *Spool) writeAck(seq uint64) error {
	tmp := filepath.Join(s.dir, ackTempName)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%016x\n", seq)
	if err == nil {
		err = f.Sync()
		s.syncs.Add(1)
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, ackName)); err != nil {
		return err
	}
	s.syncs.Add(1)
	return syncDir(s.dir)
}

// Notify returns a channel that is closed once the spool holds an unacknowledged event:
// at once if it already does, else at the next successful Append, or at Close. A
// forwarder waits on it, then calls Next until Next returns nothing, then asks again.
func (s *Spool) Notify() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.depthLocked() > 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if s.notify == nil {
		s.notify = make(chan struct{})
	}
	return s.notify
}

// Depth returns the number of stored events not yet acknowledged.
func (s *Spool) Depth() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.depthLocked()
}

func (s *Spool) depthLocked() int {
	var n uint64
	for _, g := range s.segs {
		switch {
		case g.end() <= s.ackSeq+1:
		case g.first > s.ackSeq:
			n += g.count
		default:
			n += g.end() - s.ackSeq - 1
		}
	}
	return int(n)
}

// Close waits for the commit in progress, commits what is still pending, and releases
// the files. Other methods then return ErrSpoolClosed; Close again returns nil.
func (s *Spool) Close() error {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for s.flushing {
		s.cond.Wait()
	}
	// Appenders already queued were promised a commit; make it rather than fail them.
	s.flushing = true
	s.flushLocked()
	s.flushing = false
	s.cond.Broadcast()
	if s.notify != nil {
		close(s.notify)
		s.notify = nil
	}
	var errs []error
	if s.wf != nil {
		errs = append(errs, s.wf.Close())
		s.wf = nil
	}
	if s.rf != nil {
		errs = append(errs, s.rf.Close())
		s.rf = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("taskd: spool: close: %w", err)
	}
	return nil
}
