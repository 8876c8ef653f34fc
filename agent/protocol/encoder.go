package protocol

// AppendResponse appends one framed reply to dst: the optional 0xFF sentinel, the compact
// JSON object and "\n".
func AppendResponse(dst []byte, r *Response) []byte {
	panic("protocol: AppendResponse not written yet")
}

// AppendValue appends v as JSON in the reference's style: ", " and ": " separators, pure ASCII.
// v may be any decoded value type, int, int32, uint32, a struct with json tags (name and
// omitempty), a pointer, a slice or a map with string keys.
func AppendValue(dst []byte, v any) []byte { panic("protocol: AppendValue not written yet") }
