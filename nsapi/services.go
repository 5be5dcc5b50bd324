package nsapi

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/siteserver/siteserver/sites"
)

// Service assignments: which site services each site server runs and their central
// settings. Administrators edit them through PathServers/{id}/services (and the rules
// file's servers section); a site server gets them, merged, with every registration answer
// (RegisterServerResponse.Services) and reports back, with its next registration, what is in
// force and how each service stands (RegisterServerRequest.Report).

// ServiceSettings are central settings of a site server's services; see sites.ServiceSettings.
type ServiceSettings = sites.ServiceSettings

// Where a setting in force on a site server came from.
const (
	FromCentral = "central" // the NS's service assignment
	FromLocal   = "local"   // the site server's local YAML, which pins it
	FromDefault = "default" // neither: the built-in default
)

// States of a site service, as its site server reports them.
const (
	ServiceRunning = "running" // serving; Error, if set, is a change that did not apply
	ServiceOff     = "off"     // not run here: neither its local YAML nor the NS turn it on
	ServiceFailed  = "failed"  // meant to run but could not start (Error says why)
)

// ServiceState is how one of a site server's services stands.
type ServiceState struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// Error is why the service could not start, or why the last central change could
	// not apply: the service then keeps its last good configuration.
	Error string `json:"error,omitempty"`
}

// SettingReport is one setting in force on a site server and where it came from.
type SettingReport struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	From  string `json:"from"`
}

// ServicesReport is what a site server reports about its services with each registration.
type ServicesReport struct {
	States   []ServiceState  `json:"states"`
	Settings []SettingReport `json:"settings"`
	// FollowsNS, in the report to an NS whose central settings the server does not follow
	// (it follows the first NS of its config), is the name that NS has in the server's
	// config: this NS's service assignment is then not in force there.
	FollowsNS string `json:"follows_ns,omitempty"`
}

// Bounds on a services report.
const (
	maxReportSettings = 128
	maxReportKey      = 64
	maxReportValue    = 16 << 10
	maxReportError    = 2048
)

// Validate checks a report; the error names the field.
func (r *ServicesReport) Validate() error {
	if len(r.States) > maxServices {
		return fmt.Errorf("report.states: %d is more than %d", len(r.States), maxServices)
	}
	seen := map[string]bool{}
	for i, st := range r.States {
		switch st.Name {
		case ServiceTask, ServicePackage, ServiceNetboot:
		default:
			return fmt.Errorf("report.states[%d].name: %q is not task, package or netboot", i, st.Name)
		}
		if seen[st.Name] {
			return fmt.Errorf("report.states[%d].name: %q given twice", i, st.Name)
		}
		seen[st.Name] = true
		switch st.State {
		case ServiceRunning, ServiceOff, ServiceFailed:
		default:
			return fmt.Errorf("report.states[%d].state: %q is not running, off or failed", i, st.State)
		}
		if len(st.Error) > maxReportError {
			return fmt.Errorf("report.states[%d].error: longer than %d bytes", i, maxReportError)
		}
	}
	if len(r.FollowsNS) > maxReportKey {
		return fmt.Errorf("report.follows_ns: longer than %d bytes", maxReportKey)
	}
	if len(r.Settings) > maxReportSettings {
		return fmt.Errorf("report.settings: %d is more than %d", len(r.Settings), maxReportSettings)
	}
	keys := map[string]bool{}
	for i, s := range r.Settings {
		if s.Key == "" || len(s.Key) > maxReportKey {
			return fmt.Errorf("report.settings[%d].key: %q is not a setting key", i, s.Key)
		}
		if keys[s.Key] {
			return fmt.Errorf("report.settings[%d].key: %q given twice", i, s.Key)
		}
		keys[s.Key] = true
		if len(s.Value) > maxReportValue {
			return fmt.Errorf("report.settings[%d].value: longer than %d bytes", i, maxReportValue)
		}
		if !slices.Contains([]string{FromCentral, FromLocal, FromDefault}, s.From) {
			return fmt.Errorf("report.settings[%d].from: %q is not central, local or default", i, s.From)
		}
	}
	return nil
}

// Setting returns the reported setting with key, if there is one.
func (r *ServicesReport) Setting(key string) (SettingReport, bool) {
	for _, s := range r.Settings {
		if s.Key == key {
			return s, true
		}
	}
	return SettingReport{}, false
}

// State returns the reported state of the named service, if there is one.
func (r *ServicesReport) State(name string) (ServiceState, bool) {
	for _, s := range r.States {
		if s.Name == name {
			return s, true
		}
	}
	return ServiceState{}, false
}

// ServiceChangeRequest changes the manual central settings of one site server: keys to set
// (with their values as text: true/false, "08:00-18:00 2Mbit, 18:00-08:00 20Mbit", "50GiB",
// a boot file) and keys to unset. Keys are those of sites.ServiceKeys and
// netboot.boot_files.ARCH.
type ServiceChangeRequest struct {
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
}

// ServerServicesView is a site server's service assignment as administrators see it: what
// each source sets, what is in force on the server and where each setting came from, and
// how each service stands.
type ServerServicesView struct {
	ID       string          `json:"id"`
	Hostname string          `json:"hostname,omitempty"`
	Manual   ServiceSettings `json:"manual"`
	Imported ServiceSettings `json:"imported"`
	Settings []SettingView   `json:"settings"`
	States   []ServiceState  `json:"states"`
	// ReportedAt is when the server last reported (its last registration); zero if never.
	ReportedAt time.Time `json:"reported_at,omitzero"`
	// Reports is false for a site server that never reported its settings (one older than
	// service assignments, or not registered since it enrolled).
	Reports bool `json:"reports"`
	// FollowsNS is set when the server follows another NS's central settings (the first
	// of its config, named as there): this NS's are not put in force on it.
	FollowsNS string `json:"follows_ns,omitempty"`
}

// SettingView is one setting of a site server.
type SettingView struct {
	Key string `json:"key"`
	// Value and From are what the server reported in force and where it came from
	// (central, local: a pin in its YAML, default); both empty if it did not report it.
	Value string `json:"value"`
	From  string `json:"from,omitempty"`
	// Central is the central value, if either source sets one, and Source the source that
	// decided it (manual or imported); Shadowed is a manual value the imported one overrides.
	Central  *string `json:"central,omitempty"`
	Source   string  `json:"source,omitempty"`
	Shadowed *string `json:"shadowed,omitempty"`
	// Pending is set when the central value is not in force on the server yet, and not
	// overridden by a local pin: it has not registered since, or could not apply it (its
	// service's error says why).
	Pending bool `json:"pending,omitempty"`
}

// ServerServices returns a site server's service assignment and what it reported.
func (c *Client) ServerServices(ctx context.Context, id string) (ServerServicesView, error) {
	var out ServerServicesView
	err := c.do(ctx, "GET", PathServers+"/"+url.PathEscape(id)+"/services", nil, &out)
	return out, err
}

// ChangeServerServices changes a site server's manual service settings.
func (c *Client) ChangeServerServices(ctx context.Context, id string, req ServiceChangeRequest) (ServerServicesView, error) {
	var out ServerServicesView
	err := c.do(ctx, "POST", PathServers+"/"+url.PathEscape(id)+"/services", req, &out)
	return out, err
}
