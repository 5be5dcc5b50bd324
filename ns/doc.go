// Package ns is the Notification Server side of the suite: the NS API types and the client
// site servers and agents use to enroll and register, and the reference NS server with its
// SQLite store, its own CA, site maintenance and registration.
package ns
