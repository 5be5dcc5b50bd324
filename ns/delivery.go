package ns

import (
	"context"
	"errors"
	"fmt"

	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

// packageError is a job's package that does not check: the admin's mistake, answered
// with 400.
type packageError struct{ error }

// pinPackages fills in the version and digest of every package the job's tasks name, so
// that the job the NS signs names exactly the content the agent may run. A package the
// NS does not have, or one whose version or digest differs from what the job pins, is the
// admin's error; anything else is the NS's.
func (s *Server) pinPackages(ctx context.Context, job *nsapi.Job) error {
	for i := range job.Tasks {
		t := &job.Tasks[i]
		if t.Package == "" {
			continue
		}
		p, err := s.store.Package(ctx, t.Package)
		if errors.Is(err, store.ErrNotFound) {
			return packageError{fmt.Errorf("job.tasks[%d].package: the NS has no package %q ('siteserver packages add' registers one)", i, t.Package)}
		}
		if err != nil {
			return fmt.Errorf("ns: job.tasks[%d].package %q: %w", i, t.Package, err)
		}
		if err := t.PinPackage(p); err != nil {
			return packageError{fmt.Errorf("job.tasks[%d]: %w", i, err)}
		}
	}
	return nil
}
