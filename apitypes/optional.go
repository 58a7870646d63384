package apitypes

import (
	"bytes"
	"encoding/json"
)

// Optional is a request field that remembers whether the client sent it:
// omitted (Set false), sent as null (Set and Null), or sent with a value,
// zero values included. The server fills defaults only for omitted fields
// and validates every sent one, so `"weight": 0` is refused or stored as 0,
// never turned into the default. With the `omitzero` tag an unset Optional
// is left out of the JSON a client sends.
type Optional[T any] struct {
	Value T
	Set   bool
	Null  bool
}

// Some is an Optional holding v.
func Some[T any](v T) Optional[T] { return Optional[T]{Value: v, Set: true} }

// Null is an Optional sent as JSON null.
func Null[T any]() Optional[T] { return Optional[T]{Set: true, Null: true} }

// IsZero reports whether the field was left out; encoding/json's
// omitzero uses it.
func (o Optional[T]) IsZero() bool { return !o.Set }

// Present reports whether the field was sent with a value (not null).
func (o Optional[T]) Present() bool { return o.Set && !o.Null }

// Or returns the value when present, else def.
func (o Optional[T]) Or(def T) T {
	if o.Present() {
		return o.Value
	}
	return def
}

// MarshalJSON writes the value, or null when unset or null.
func (o Optional[T]) MarshalJSON() ([]byte, error) {
	if !o.Present() {
		return []byte("null"), nil
	}
	return json.Marshal(o.Value)
}

// UnmarshalJSON records that the field was sent. encoding/json calls it
// for a JSON null too, which is how null and omitted stay apart.
func (o *Optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		var zero T
		o.Value, o.Null = zero, true
		return nil
	}
	o.Null = false
	return json.Unmarshal(b, &o.Value)
}
