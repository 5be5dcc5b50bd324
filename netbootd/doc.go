// Package netbootd will hold the network boot service: PXE proxyDHCP on 67 and 4011, Apple
// BSDP, a read-only TFTP server and iPXE scripts over HTTP.
package netbootd
