package service

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// listener is a service that binds a real socket and closes it when stopped.
type listener struct {
	name   string
	closed atomic.Bool
	ready  atomic.Bool
}

func (l *listener) Name() string { return l.name }
func (l *listener) Ready() bool  { return l.ready.Load() }
func (l *listener) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	l.ready.Store(true)
	<-ctx.Done()
	ln.Close()
	l.closed.Store(true)
	return nil
}

func TestFailureStopsTheOthers(t *testing.T) {
	a := &listener{name: "a"}
	boom := errors.New("bind failed")
	g := &Group{}
	g.Add(a, Func{N: "b", F: func(ctx context.Context) error {
		time.Sleep(20 * time.Millisecond)
		return boom
	}})
	err := g.Run(context.Background())
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want %v", err, boom)
	}
	if !a.closed.Load() {
		t.Fatal("service a was not stopped after b failed")
	}
}

func TestGracefulStop(t *testing.T) {
	a, b := &listener{name: "a"}, &listener{name: "b"}
	g := &Group{}
	g.Add(a, b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !g.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("group never became ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !a.closed.Load() || !b.closed.Load() {
		t.Fatal("services did not close their sockets")
	}
}

func TestStopTimeout(t *testing.T) {
	g := &Group{StopTimeout: 50 * time.Millisecond}
	g.Add(Func{N: "stuck", F: func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(time.Second)
		return nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Run(ctx); err == nil {
		t.Fatal("Run returned nil although a service did not stop in time")
	}
}
