package apitypes

import (
	"encoding/json"
	"testing"
)

func TestOptionalKeepsOmittedNullAndZeroApart(t *testing.T) {
	type body struct {
		A Optional[int]    `json:"a,omitzero"`
		B Optional[int]    `json:"b,omitzero"`
		C Optional[int]    `json:"c,omitzero"`
		D Optional[string] `json:"d,omitzero"`
	}
	var got body
	if err := json.Unmarshal([]byte(`{"a":0,"b":null,"d":""}`), &got); err != nil {
		t.Fatal(err)
	}
	if !got.A.Present() || got.A.Value != 0 {
		t.Errorf("a sent as 0: %+v", got.A)
	}
	if !got.B.Set || !got.B.Null || got.B.Present() {
		t.Errorf("b sent as null: %+v", got.B)
	}
	if got.C.Set {
		t.Errorf("c omitted: %+v", got.C)
	}
	if !got.D.Present() {
		t.Errorf("d sent as empty string: %+v", got.D)
	}
	out, err := json.Marshal(body{A: Some(0), D: Some("x")})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"a":0,"d":"x"}` {
		t.Errorf("marshal = %s, want only the set fields", out)
	}
	var typed body
	if err := json.Unmarshal([]byte(`{"a":"x"}`), &typed); err == nil {
		t.Error("a string into Optional[int] was accepted")
	}
}
