// Package tftp is the read-only TFTP server of the network boot service: it hands PXE
// clients their first boot stage (iPXE) from the boot directory.
//
// It speaks RFC 1350 in octet and netascii modes with option negotiation (RFC 2347):
// blksize (RFC 2348, capped by the receiving interface's MTU), timeout and tsize
// (RFC 2349) and windowsize (RFC 7440). Each transfer runs on a socket of its own,
// answering from the address its request came to; a few lock-step transfers at a time
// use blocking sockets, the rest Go's network poller.
//
// Requests come from anyone, with any source address: nothing larger than three times a
// request goes to an address before it has answered on its transfer's port, and what one
// address may hold and ask for is bounded (see Config).
package tftp
