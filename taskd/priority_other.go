//go:build !linux

package taskd

func withRaisedPriority(f func()) { f() }
