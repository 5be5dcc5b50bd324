package taskd

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/siteserver/siteserver/nsapi"
)

// Append stores events durably: when it returns nil they are synced to disk, and so is
// the directory entry of a segment it created. Concurrent calls share syncs: all records
// that arrive while one sync is running go to disk together in the next one.
//
// An event whose JSON exceeds 1 MiB (far above what Event.Validate allows) fails the
// whole call. After a failed write or sync every later Append fails too, because what reached the
// disk is then unknown (and a retried fsync can report success for lost data); reopening
// the spool finds out. Events already stored can still be read and acknowledged.
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
	if s.werr != nil {
		return fmt.Errorf("taskd: spool: an earlier write failed: %w", s.werr)
	}
	c := s.pendCommit
	s.pend = append(s.pend, recs...)
	s.pendN += len(events)
	s.nextSeq += uint64(len(events))
	for !c.done {
		if s.flushing {
			s.cond.Wait()
			continue
		}
		s.flushing = true
		s.flushLocked()
		s.flushing = false
		s.cond.Broadcast()
	}
	return c.err
}

// flushLocked writes and syncs everything pending as one commit. It is called with mu
// held and flushing set, and releases mu during the I/O.
func (s *Spool) flushLocked() {
	buf, n, first, c := s.pend, s.pendN, s.pendFirst, s.pendCommit
	s.pend, s.spare = s.spare[:0], nil
	s.pendN, s.pendFirst, s.pendCommit = 0, s.nextSeq, &commit{}
	if n == 0 {
		c.done = true
		return
	}
	if s.werr != nil {
		c.done, c.err = true, fmt.Errorf("taskd: spool: an earlier write failed: %w", s.werr)
		return
	}
	roll := len(s.segs) == 0
	if !roll {
		last := s.segs[len(s.segs)-1]
		roll = last.size >= s.rollBytes || last.end() != first
	}

	s.mu.Unlock()
	err := s.write(buf, first, roll)
	s.mu.Lock()

	c.done = true
	if err != nil {
		s.werr = err
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

func (s *Spool) write(buf []byte, first uint64, roll bool) error {
	if roll {
		if s.wf != nil {
			// Already synced by the commit that wrote its last record.
			if err := s.wf.Close(); err != nil {
				return err
			}
			s.wf = nil
		}
		f, err := os.OpenFile(filepath.Join(s.dir, segmentName(first)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		s.wf = f
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
