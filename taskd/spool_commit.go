package taskd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/siteserver/siteserver/nsapi"
)

// SetMaxBytes bounds the bytes of records not yet acknowledged by the NS; Append refuses
// events past it with ErrSpoolFull. Zero or less: no bound. Acknowledged records leave the
// disk a segment at a time, so the files may hold up to a segment more than this.
func (s *Spool) SetMaxBytes(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxBytes = max(n, 0)
}

// Append stores events durably: when it returns nil they are synced to disk, and so is
// the directory entry of a segment it created. Concurrent calls share syncs: all records
// that arrive while one sync is running go to disk together in the next one.
//
// An event whose JSON exceeds 1 MiB (far above what Event.Validate allows) fails the
// whole call. Events past the limit set by SetMaxBytes are refused with ErrSpoolFull,
// unless nothing is spooled. A failed write or sync fails the appends in that commit;
// what it left on disk is unknown (and a retried fsync can report success for lost data),
// so the next commit first cuts the segment back to its last synced record, or removes
// a segment it had just made, and then goes on in a new segment. A disk that was full
// thus takes events again as soon as it has room, and nothing acknowledged is lost.
// Events already stored can be read and acknowledged throughout.
func (s *Spool) Append(events []nsapi.Event) error {
	if len(events) == 0 {
		return nil
	}
	var recs []byte
	for i := range events {
		b, err := json.Marshal(&events[i])
		if err != nil {
			return fmt.Errorf("taskd: spool: event %q: %w", events[i].ID, err)
		}
		if len(b) > maxRecordBytes {
			return fmt.Errorf("taskd: spool: event %q: %d bytes encoded, more than %d", events[i].ID, len(b), maxRecordBytes)
		}
		recs = appendRecord(recs, b)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrSpoolClosed
	}
	if backlog := s.unackedBytesLocked() + int64(len(s.pend)); s.maxBytes > 0 && backlog > 0 && backlog+int64(len(recs)) > s.maxBytes {
		s.refusedFull += uint64(len(events))
		return ErrSpoolFull
	}
	c := s.pendCommit
	s.pend = append(s.pend, recs...)
	s.pendN += len(events)
	s.nextSeq += uint64(len(events))
	lead := !s.flushing
	if lead {
		s.flushing = true
	} else {
		s.mu.Unlock()
		select {
		case <-c.done:
		case <-c.lead:
		}
		s.mu.Lock()
		if lead = !c.written() && !c.taken; lead {
			c.taken = true // the flusher role, handed on to this commit
		} else if !c.written() {
			s.mu.Unlock()
			<-c.done
			s.mu.Lock()
		}
	}
	if lead {
		s.flushLocked()
		if s.pendN > 0 {
			close(s.pendCommit.lead) // still flushing: the role passes to those appenders
		} else {
			s.flushing = false
			s.cond.Broadcast()
		}
	}
	if c.err != nil {
		s.refusedIO += uint64(len(events))
	}
	return c.err
}

// unackedBytesLocked is the size of the records not yet acknowledged.
func (s *Spool) unackedBytesLocked() int64 {
	var n int64
	for _, g := range s.segs {
		n += g.size
	}
	if len(s.segs) > 0 {
		n -= min(s.readOff, s.segs[0].size)
	}
	return n
}

// flushLocked writes and syncs everything pending as one commit. It is called with mu
// held and flushing set, and releases mu during the I/O.
func (s *Spool) flushLocked() {
	buf, n, first, c := s.pend, s.pendN, s.pendFirst, s.pendCommit
	s.pend, s.spare = s.spare[:0], nil
	s.pendN, s.pendFirst, s.pendCommit = 0, s.nextSeq, newCommit()
	defer close(c.done)
	if n == 0 {
		return
	}
	broken := s.werr != nil
	// Where the segment last written to ends for sure, in case that write failed: a
	// segment the spool lists ends at its size; one it does not was made by the failed
	// commit.
	known := int64(-1)
	if n := len(s.segs); n > 0 && s.segs[n-1].first == s.wfFirst {
		known = s.segs[n-1].size
	}
	roll := s.wf == nil || broken || len(s.segs) == 0
	if !roll {
		last := s.segs[len(s.segs)-1]
		roll = last.size >= s.rollBytes || last.end() != first || s.wfFirst != last.first
	}

	s.mu.Unlock()
	var err error
	if broken {
		err = s.repair(known)
	}
	if err == nil {
		err = s.write(buf, first, roll)
	}
	s.mu.Lock()

	if broken && err == nil {
		s.werr = nil
		s.repairs++
	}
	if err != nil {
		s.werr = err
		s.writeFailures++
		c.err = fmt.Errorf("taskd: spool: %w", err)
		return
	}
	if roll {
		if len(s.segs) == 0 {
			s.readOff, s.readSeq = 0, first
		}
		s.segs = append(s.segs, segment{first: first})
	}
	last := &s.segs[len(s.segs)-1]
	last.count += uint64(n)
	last.size += int64(len(buf))
	s.appended += uint64(n)
	s.commits++
	if int64(cap(buf)) <= 4*s.rollBytes {
		s.spare = buf
	}
	if s.notify != nil {
		close(s.notify)
		s.notify = nil
	}
}

// repair undoes what a failed commit may have left in the segment it wrote to (wfFirst):
// a segment the spool lists is cut back to its synced size (known), one the commit had
// just made is removed. The next commit then starts a new segment, so nothing is written
// again where a write failed. A repair that fails is tried again by the next commit.
func (s *Spool) repair(known int64) error {
	if s.wf != nil {
		s.wf.Close()
		s.wf = nil
	}
	path := filepath.Join(s.dir, segmentName(s.wfFirst))
	var err error
	if known >= 0 {
		err = truncateSync(path, known)
	} else if err = os.Remove(path); err == nil || errors.Is(err, fs.ErrNotExist) {
		err = syncDir(s.dir)
	}
	if err != nil {
		return fmt.Errorf("repair after a failed write: %w", err)
	}
	return nil
}

func (s *Spool) write(buf []byte, first uint64, roll bool) error {
	if roll {
		if s.wf != nil {
			// Already synced by the commit that wrote its last record.
			err := s.wf.Close()
			s.wf = nil
			if err != nil {
				return err
			}
		}
		f, err := os.OpenFile(filepath.Join(s.dir, segmentName(first)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		s.wf, s.wfFirst = f, first
		if err := syncDir(s.dir); err != nil {
			return err
		}
		s.syncs.Add(1)
	}
	if _, err := s.wf.Write(buf); err != nil {
		return err
	}
	s.syncs.Add(1)
	return s.wf.Sync()
}
