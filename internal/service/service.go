// Package service runs the site services of one process: each is constructed and validated
// before any starts, then all run under one context; when one fails the others are stopped.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Service is one long-running part of a process. Run binds its sockets, serves until ctx is
// done, and returns only after it has closed them.
type Service interface {
	Name() string
	Run(ctx context.Context) error
}

// Readier is implemented by services that can tell when they are serving (sockets bound,
// state loaded). Services without it count as ready once started.
type Readier interface {
	Ready() bool
}

// Group runs services together.
type Group struct {
	Logger      *slog.Logger
	StopTimeout time.Duration // how long shutdown may take before Run gives up waiting; default 5s

	services []Service
	started  atomic.Bool
}

// Add appends services; it must be called before Run.
func (g *Group) Add(s ...Service) { g.services = append(g.services, s...) }

// Services returns the services in the order they were added.
func (g *Group) Services() []Service { return g.services }

// Ready reports whether every service is serving.
func (g *Group) Ready() bool {
	if !g.started.Load() {
		return false
	}
	for _, s := range g.services {
		if r, ok := s.(Readier); ok && !r.Ready() {
			return false
		}
	}
	return true
}

// Run runs every service until ctx is done or one of them fails; then it cancels the rest
// and waits for them at most StopTimeout. A service returning nil before ctx is done is
// treated as finished, not as a failure.
func (g *Group) Run(ctx context.Context) error {
	logger := g.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	stopTimeout := g.StopTimeout
	if stopTimeout <= 0 {
		stopTimeout = 5 * time.Second
	}
	eg, ctx := errgroup.WithContext(ctx)
	for _, s := range g.services {
		eg.Go(func() error {
			logger.Info("service starting", "service", s.Name())
			err := s.Run(ctx)
			if err != nil && !errors.Is(err, context.Canceled) {
				logger.Error("service failed", "service", s.Name(), "err", err)
				return fmt.Errorf("%s: %w", s.Name(), err)
			}
			logger.Info("service stopped", "service", s.Name())
			return nil
		})
	}
	g.started.Store(true)
	done := make(chan error, 1)
	go func() { done <- eg.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return err
	case <-time.After(stopTimeout):
		return fmt.Errorf("service: shutdown did not finish within %s", stopTimeout)
	}
}

// Func adapts a function to a Service.
type Func struct {
	N string
	F func(ctx context.Context) error
}

func (f Func) Name() string                  { return f.N }
func (f Func) Run(ctx context.Context) error { return f.F(ctx) }
