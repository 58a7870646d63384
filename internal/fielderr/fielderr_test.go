package fielderr

import (
	"errors"
	"fmt"
	"testing"
)

func TestList(t *testing.T) {
	var l List
	if l.Err() != nil {
		t.Fatal("an empty list is an error")
	}
	l.Add("port", "must be between 1 and 65535")
	l.Add("scheme", `must be "http" or "https"`)
	err := fmt.Errorf("creating backend: %w", l.Err())
	got, ok := From(err)
	if !ok || len(got) != 2 || got[0].Field != "port" || got[1].Field != "scheme" {
		t.Fatalf("From(wrapped) = %v, %v", got, ok)
	}
	want := `creating backend: invalid input: port: must be between 1 and 65535; scheme: must be "http" or "https"`
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
	if _, ok := From(errors.New("plain")); ok {
		t.Fatal("From accepted an error without field errors")
	}
	if f, ok := From(New("name", "is taken")); !ok || f[0] != (FieldError{Field: "name", Message: "is taken"}) {
		t.Fatalf("New: %v %v", f, ok)
	}
}
