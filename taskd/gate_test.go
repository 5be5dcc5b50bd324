package taskd

import (
	"net"
	"testing"
	"time"
)

func TestAcceptGate(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	g := newAcceptGate()
	ln := gatedListener{inner, g}
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	dial()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("open gate held a connection")
	}

	g.hold()
	g.hold() // holding twice is holding
	dial()
	select {
	case <-accepted:
		t.Fatal("a connection passed the held gate")
	case <-time.After(200 * time.Millisecond):
	}
	g.release()
	g.release()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the connection held did not pass after release")
	}
}
