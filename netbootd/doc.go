// Package netbootd is the network boot service: it configures and runs the PXE, BSDP and
// proxyDHCP server (package netbootd/pxe) and the TFTP server (package netbootd/tftp),
// serves iPXE scripts and boot files over HTTP, and answers the PXE server's questions
// about booting computers from the NS. For Secure Boot it also serves scripts where
// signed iPXE builds look for them: autoexec.ipxe over TFTP, and the ITMS script address,
// which finds the asking computer by its parameters or its source address.
package netbootd
