// Package tickle carries tickles: small authenticated UDP datagrams that tell a
// task server (from the NS, UDP 50123) or an agent (from its task server, UDP
// 50124) that it has work pending or that its settings changed.
//
// A tickle is only a hint. The receiver reacts by asking its server over the
// authenticated API what changed, and it polls anyway, so a lost tickle costs
// latency, never correctness. Tickles still change what a receiver does, so a
// receiver acts only on tickles that carry a valid HMAC from a key it holds,
// whose timestamp is close to its own clock, and that it has not seen before.
//
// # Wire format
//
// One UDP datagram, integers big-endian, at most 1024 bytes. With n the length
// of the sender id and p the length of the payload:
//
//	offset      size  field
//	0           2     magic "TK" (0x54 0x4b)
//	2           1     version, 1
//	3           1     type: 1 work pending, 2 settings changed; others are rejected
//	4           1     flags, 0; a datagram with any bit set is rejected, so that
//	                  a later version can give bits a meaning old receivers refuse
//	5           1     n, sender id length, 1..64
//	6           n     sender id: the sender's GUID string
//	6+n         4     key id: which of the sender's keys made the tag, so keys can
//	                  rotate and a receiver can hold one key per NS
//	10+n        8     sequence, strictly increasing per sender
//	18+n        8     timestamp, Unix nanoseconds, two's complement
//	26+n        2     p, payload length, 0..512
//	28+n        p     payload, opaque to this package
//	28+n+p      32    tag: HMAC-SHA256 with the key over bytes [0, 28+n+p)
//
// The whole datagram must be exactly 60+n+p bytes: trailing bytes are rejected,
// so every accepted tickle has one encoding. The smallest datagram is 61 bytes,
// the largest 636.
//
// # Authentication and replay protection
//
// A [Verifier] looks up the key by (sender id, key id), compares the tag in
// constant time, then applies two checks, both only to authentic datagrams so
// forgeries cannot disturb its state:
//
//   - the timestamp must be within a window (default 2 minutes) of the
//     receiver's clock, which bounds how long a captured datagram stays useful;
//   - within that window, each sender's sequence numbers are tracked with a
//     sliding bitmap of the last 960 numbers below the highest seen, so
//     datagrams reordered in flight are accepted but each is accepted once.
//
// See [Verifier] for how that state stays bounded and why a receiver refuses
// tickles stamped before it started.
package tickle
