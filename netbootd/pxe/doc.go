// Package pxe answers the network boot requests that ride on DHCP, without ever leasing
// an address: as proxyDHCP on port 67 and as the PXE boot server on port 4011 for PXE and
// UEFI HTTP boot clients, and over Apple's BSDP for Macs, whose INFORMs also come to 67.
//
// Decide is the whole answer to one request: a function of nothing but the request,
// where it arrived, the kind of computer and the config. Server runs it on the two
// sockets, asks Computers (the NS) about each booting computer, and counts requests,
// replies and what it left unanswered. It also remembers for a few minutes which MAC
// asked from (or for) which address and with which system UUID, so that a later request
// carrying neither (a signed iPXE fetching its script) can be tied to its computer.
//
// BSDP is part of this package rather than one of its own: a Mac's INFORM goes through
// Decide like any other request and is answered with the same reply building, server
// address choice, templates and ignore reasons, and the same metrics count it.
package pxe
