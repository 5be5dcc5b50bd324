// Package ns is the reference Notification Server: its HTTPS API handlers (enrollment,
// registration of site servers and agents, site maintenance, jobs, packages, computers),
// their authentication, and the tickler that wakes task servers. What it keeps is in
// ns/store; the contract its clients speak is nsapi.
package ns
