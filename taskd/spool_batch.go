package taskd

import "github.com/siteserver/siteserver/nsapi"

// EncodeBatch and DecodeBatch are the wire form of a batch of spooled events forwarded to
// the NS; the form itself is nsapi's, since the NS decodes what task servers encode.
func EncodeBatch(events []nsapi.Event) ([]byte, error) { return nsapi.EncodeEvents(events) }

// DecodeBatch: see nsapi.DecodeEvents.
func DecodeBatch(b []byte, maxDecoded int64) ([]nsapi.Event, error) {
	return nsapi.DecodeEvents(b, maxDecoded)
}
