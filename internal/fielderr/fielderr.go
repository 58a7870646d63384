// Package fielderr carries field-level validation errors from the packages
// that validate input (pools, certs) to the admin API, which turns them into
// one JSON error shape.
package fielderr

import (
	"errors"
	"strings"
)

// FieldError says what is wrong with one input field. Field uses the JSON
// name (snake_case) so that an API client can point at the offending input.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// List is a set of field errors. The zero value is empty; Err returns nil for
// an empty list so callers can write `return errs.Err()`.
type List []FieldError

// Add appends an error for field.
func (l *List) Add(field, message string) {
	*l = append(*l, FieldError{Field: field, Message: message})
}

// Err returns the list as an error, or nil when it is empty.
func (l List) Err() error {
	if len(l) == 0 {
		return nil
	}
	return &Error{Fields: l}
}

// Error is a validation failure: input rejected, nothing stored.
type Error struct {
	Fields List
}

func (e *Error) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Field + ": " + f.Message
	}
	return "invalid input: " + strings.Join(parts, "; ")
}

// New returns an *Error with a single field error.
func New(field, message string) error {
	return &Error{Fields: List{{Field: field, Message: message}}}
}

// From extracts the field errors from err, if it is (or wraps) an *Error.
func From(err error) (List, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Fields, true
	}
	return nil, false
}
