package protocol

// Decoder turns a byte stream into Messages. It is push-based so that transports can feed it
// whatever a read returned, and it keeps partial input across calls (and across host
// reconnects on virtio-serial, as the reference does).
type Decoder struct{}

// NewDecoder returns a decoder in its initial state.
func NewDecoder() *Decoder { return &Decoder{} }

// Feed consumes p and calls emit once for each complete message, in input order.
func (d *Decoder) Feed(p []byte, emit func(Message)) { panic("protocol: Decoder.Feed not written yet") }

// Reset discards any partial input, as for a new unix-listen client.
func (d *Decoder) Reset() {}
