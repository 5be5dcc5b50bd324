package ns

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// computerIndex is every computer record, by the keys an administrator's row may match.
// Rows are planned against it in memory: an import of a whole estate does not cost a
// query per row while it holds the lock.
type computerIndex struct {
	byID   map[int64]nsapi.ComputerRecord
	byMAC  map[string]int64
	byUUID map[string]int64
	byName map[string][]int64
}

func (s *Server) computerIndex(ctx context.Context) (*computerIndex, error) {
	cs, err := s.store.Computers(ctx)
	if err != nil {
		return nil, err
	}
	ix := &computerIndex{byID: map[int64]nsapi.ComputerRecord{}, byMAC: map[string]int64{}, byUUID: map[string]int64{}, byName: map[string][]int64{}}
	for _, c := range cs {
		ix.byID[c.ID] = c
		if c.MAC != "" {
			ix.byMAC[c.MAC] = c.ID
		}
		if c.UUID != "" {
			ix.byUUID[c.UUID] = c.ID
		}
		if c.Name != "" {
			ix.byName[c.Name] = append(ix.byName[c.Name], c.ID)
		}
	}
	return ix, nil
}

// uuid finds the record with u in either byte order.
func (ix *computerIndex) uuid(u string) (nsapi.ComputerRecord, bool) {
	if u == "" {
		return nsapi.ComputerRecord{}, false
	}
	for _, k := range []string{u, nsapi.SwapUUID(u)} {
		if id, ok := ix.byUUID[k]; ok {
			return ix.byID[id], true
		}
	}
	return nsapi.ComputerRecord{}, false
}

func (ix *computerIndex) mac(m string) (nsapi.ComputerRecord, bool) {
	if id, ok := ix.byMAC[m]; ok && m != "" {
		return ix.byID[id], true
	}
	return nsapi.ComputerRecord{}, false
}

// computerPlan is what predefining one computer changes: the record to write (ID 0: a new
// one) and unknown records merged into it, to delete.
type computerPlan struct {
	put     nsapi.ComputerRecord
	remove  []int64
	changed bool
}

// planError is why a row cannot be taken, with the HTTP status a single request gets.
type planError struct {
	status int
	msg    string
}

// sighting reports a record that only network boot made (nothing an administrator or an
// agent said about it): it may be merged into an administrator's row.
func sighting(c nsapi.ComputerRecord) bool {
	return c.Kind == nsapi.ComputerUnknown && c.Agent == "" && c.ClaimedBy == "" && c.Name == ""
}

func describe(c nsapi.ComputerRecord) string {
	var parts []string
	if c.Name != "" {
		parts = append(parts, fmt.Sprintf("%q", c.Name))
	}
	if c.MAC != "" {
		parts = append(parts, c.MAC)
	}
	if c.UUID != "" {
		parts = append(parts, c.UUID)
	}
	return fmt.Sprintf("the %s computer %s", c.Kind, strings.Join(parts, " "))
}

// planComputer works out how to make row a predefined computer: the record its MAC or
// UUID names is updated (a managed one only with force, the agent's claim kept as a
// conflict), or a new one is made. When the MAC and the UUID name two records, one of
// them a mere sighting, the sighting is merged into the other; otherwise the row is refused.
func (s *Server) planComputer(ix *computerIndex, row nsapi.ComputerRow, force bool) (computerPlan, *planError) {
	var plan computerPlan
	rm, hasM := ix.mac(row.MAC)
	ru, hasU := ix.uuid(row.UUID)
	target, found := rm, hasM
	if !found {
		target, found = ru, hasU
	}
	var merged *nsapi.ComputerRecord
	if hasM && hasU && rm.ID != ru.ID {
		switch {
		case sighting(ru):
			plan.remove, merged = append(plan.remove, ru.ID), &ru
		case sighting(rm):
			plan.remove, merged, target = append(plan.remove, rm.ID), &rm, ru
		default:
			return plan, &planError{http.StatusConflict, fmt.Sprintf("MAC %s is %s, and UUID %s is %s; delete one of them first",
				row.MAC, describe(rm), row.UUID, describe(ru))}
		}
	}
	before := target
	if !found {
		target = nsapi.ComputerRecord{Arch: -1, Created: s.now().UTC()}
	}
	switch {
	case target.Kind == nsapi.ComputerManaged && !force:
		return plan, &planError{http.StatusConflict, fmt.Sprintf("%s is a managed computer (agent %s); add -force to predefine it anyway",
			cmpOr(target.MAC, target.UUID), target.Agent)}
	case target.Kind == nsapi.ComputerManaged:
		// The administrator's record wins; the agent's claim stays visible as a conflict.
		target.ClaimedBy, target.Agent = target.Agent, ""
	}
	if row.Name != "" {
		for _, id := range ix.byName[row.Name] {
			if id != target.ID && !slices.Contains(plan.remove, id) {
				return plan, &planError{http.StatusConflict, fmt.Sprintf("the name %q is taken by %s", row.Name, describe(ix.byID[id]))}
			}
		}
	}
	target.Kind, target.Name, target.Site = nsapi.ComputerPredefined, row.Name, row.Site
	if row.MAC != "" {
		target.MAC = row.MAC
	}
	if row.UUID != "" {
		target.UUID = row.UUID
	}
	if merged != nil {
		// What network boot knew of the sighting carries over.
		if target.LastSeen.Before(merged.LastSeen) {
			target.Arch, target.LastServer, target.LastSeen = merged.Arch, merged.LastServer, merged.LastSeen
		}
		if merged.Preboot {
			target.Preboot, target.PrebootChanged = true, merged.PrebootChanged
		}
	}
	plan.put = target
	plan.changed = !found || merged != nil || target != before
	return plan, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// siteExists reports a site the rules in force define.
func (s *Server) siteExists(name string) bool {
	return slices.ContainsFunc(s.rules.Load().Sites(), func(st sites.Site) bool { return st.Name == name })
}

// handleImportComputers predefines the computers of a CSV file (admin). Every row is
// checked, against the file and against what the NS holds, before anything changes; if
// any is wrong, the answer lists every error with its line and nothing changes. Rows that
// match what is stored change nothing, so a file can be imported again.
func (s *Server) handleImportComputers(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBodyN(w, r, nsapi.MaxComputersCSVBytes)
	if !ok {
		s.nb.imports.WithLabelValues("refused").Inc()
		return
	}
	force := r.URL.Query().Get("force") == "true"
	rows, err := nsapi.ParseComputersCSV(b)
	if err != nil {
		s.nb.imports.WithLabelValues("refused").Inc()
		s.badRequest(w, err)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, err := s.computerIndex(ctx)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	var errs nsapi.RowErrors
	var res nsapi.ImportResult
	var put []nsapi.ComputerRecord
	var remove []int64
	touched := map[int64]int{} // record → the line that changes it
	for _, row := range rows {
		if row.Site != "" && !s.siteExists(row.Site) {
			errs = append(errs, nsapi.RowError{Line: row.Line, Msg: fmt.Sprintf("site %q: no such site (siteserver sites list)", row.Site)})
			continue
		}
		plan, perr := s.planComputer(ix, row, force)
		if perr != nil {
			errs = append(errs, nsapi.RowError{Line: row.Line, Msg: perr.msg})
			continue
		}
		ids := slices.Clone(plan.remove)
		if plan.put.ID != 0 {
			ids = append(ids, plan.put.ID)
		}
		clash := false
		for _, id := range ids {
			if prev, ok := touched[id]; ok {
				errs = append(errs, nsapi.RowError{Line: row.Line, Msg: fmt.Sprintf("names the same computer as line %d (%s)", prev, describe(ix.byID[id]))})
				clash = true
				break
			}
		}
		if clash {
			continue
		}
		for _, id := range ids {
			touched[id] = row.Line
		}
		switch {
		case !plan.changed:
			res.Unchanged++
			continue
		case plan.put.ID == 0 && len(plan.remove) == 0:
			res.Added++
		default:
			res.Updated++
		}
		res.Replaced += len(plan.remove)
		put, remove = append(put, plan.put), append(remove, plan.remove...)
	}
	if len(errs) > 0 {
		s.nb.imports.WithLabelValues("refused").Inc()
		s.badRequest(w, errs)
		return
	}
	if err := s.store.ReplaceComputers(ctx, put, remove); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.nb.imports.WithLabelValues("ok").Inc()
	s.logger.Info("computers imported", "rows", len(rows), "added", res.Added, "updated", res.Updated,
		"unchanged", res.Unchanged, "replaced_unknown", res.Replaced)
	httpx.WriteJSON(w, http.StatusOK, res)
}

// handleExportComputers writes the predefined computers as a CSV file that imports back
// to the same records, its cells protected against formula injection.
func (s *Server) handleExportComputers(w http.ResponseWriter, r *http.Request) {
	cs, err := s.store.Computers(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	cs = slices.DeleteFunc(cs, func(c nsapi.ComputerRecord) bool { return c.Kind != nsapi.ComputerPredefined })
	var buf bytes.Buffer
	if err := nsapi.WriteComputersCSV(&buf, cs); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="computers.csv"`)
	w.Write(buf.Bytes())
}
