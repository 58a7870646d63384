package admin

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"io"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

// Pagination bounds of every list route.
const (
	defaultPageLimit = 100
	maxPageLimit     = 1000
)

// readJSONBody checks the Content-Type and reads the whole body, bounded by
// limit. The body is read before decoding so that a PATCH can be decoded
// again inside a store transaction (which may run more than once).
func readJSONBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if err := requireMediaType(r, "application/json", "application/merge-patch+json"); err != nil {
		return nil, err
	}
	return readBody(w, r, limit)
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, toAPIError(err)
		}
		return nil, errInvalid("reading the request body failed: " + err.Error())
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, errInvalid("the request body is empty; a JSON object is expected")
	}
	return body, nil
}

// requireMediaType answers 415 unless the request's Content-Type is one of
// want (parameters such as charset are allowed; charset must be UTF-8).
func requireMediaType(r *http.Request, want ...string) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return &apiError{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMediaType,
			Message: "Content-Type is missing; send " + strings.Join(want, " or ")}
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return &apiError{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMediaType,
			Message: fmt.Sprintf("Content-Type %q cannot be parsed; send %s", ct, strings.Join(want, " or "))}
	}
	for _, w := range want {
		if mt == w {
			if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
				return &apiError{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMediaType,
					Message: fmt.Sprintf("charset %q is not supported; send UTF-8", cs)}
			}
			return nil
		}
	}
	return &apiError{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMediaType,
		Message: fmt.Sprintf("Content-Type %q is not supported; send %s", mt, strings.Join(want, " or "))}
}

// decodeStrict decodes one JSON object from body into dst, rejecting unknown
// fields and trailing data. dst may already hold values (PATCH decodes onto
// the current record): fields absent from body keep them.
func decodeStrict(body []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(body, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errInvalid(fmt.Sprintf("unexpected data after the JSON object at %s", position(body, dec.InputOffset())))
	}
	t := reflect.TypeOf(dst)
	if t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem() // what dst points to is what the body must be
	}
	return checkKeys(body, t)
}

// decodeStrictItems decodes a JSON array of objects into a []T, each item
// as decodeStrict would decode it alone. An error about one item names its
// index first ("[1]", "[1].port"), as the validation of a batch does:
// decoding the array in one go would report "port" or "the body must be a
// JSON object" without saying which item is wrong.
func decodeStrictItems[T any](body []byte) ([]T, error) {
	if kind := jsonValueKind(body); kind != "array" && json.Valid(body) {
		// null would decode as no items at all.
		return nil, errInvalid("the body must be a JSON array of objects, not " + kind)
	}
	var raws []json.RawMessage
	if err := decodeStrict(body, &raws); err != nil {
		return nil, err
	}
	items := make([]T, len(raws))
	for i, raw := range raws {
		field := fmt.Sprintf("[%d]", i)
		if kind := jsonValueKind(raw); kind != "object" {
			// null too: decoded into a struct it would be an empty item.
			msg := "must be a JSON object, not " + kind
			return nil, errInvalid(field+": "+msg, fielderr.FieldError{Field: field, Message: msg})
		}
		if err := decodeStrict(raw, &items[i]); err != nil {
			return nil, prefixFields(err, field+".")
		}
	}
	return items, nil
}

// jsonValueKind names the kind of a valid JSON value by its first byte.
func jsonValueKind(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// duplicateKey refuses an object that names a key twice, at any depth.
// encoding/json keeps the last value, so {"name": "a", "name": "b"} would
// create pool b from a request that also said a (and another parser in
// front of the API may read the first): which one was meant is the
// client's to say. body is valid JSON when this runs.
func duplicateKey(body []byte) error { return checkKeys(body, nil) }

// checkKeys refuses a key given twice and, in an object that decodes into
// a struct of t, a key that is not exactly one of its JSON field names.
// encoding/json does neither on its own: it matches names without regard
// to case, so {"name": "a", "NAME": "b"} is not a repeat to it and creates
// pool b; and DisallowUnknownFields does not reach into a field that
// decodes itself, so a misspelt key inside an apitypes.Optional (such as
// health_check's) was dropped without a word. body is valid JSON.
func checkKeys(body []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := walkKeys(dec, "", t); err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return err
		}
		return jsonError(body, err)
	}
	return nil
}

var (
	optionalPkg     = reflect.TypeFor[apitypes.Optional[bool]]().PkgPath()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// keyType is the type whose keys a JSON value is checked against: t
// without pointers and Optionals, or nil (repeats only) for a type that
// decodes itself or for none.
func keyType(t reflect.Type) reflect.Type {
	for t != nil {
		switch {
		case t.Kind() == reflect.Pointer:
			t = t.Elem()
		case t.Kind() == reflect.Struct && t.PkgPath() == optionalPkg && strings.HasPrefix(t.Name(), "Optional["):
			f, _ := t.FieldByName("Value")
			t = f.Type
		case reflect.PointerTo(t).Implements(unmarshalerType), reflect.PointerTo(t).Implements(textUnmarshaler),
			t.Kind() == reflect.Interface:
			return nil
		default:
			return t
		}
	}
	return nil
}

// nullable reports whether JSON null is a value of t (nil: any JSON).
func nullable(t reflect.Type) bool {
	if t == nil {
		return true
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Slice, reflect.Map:
		return true
	}
	return keyType(t) == nil || keyType(t) != t // decodes itself, or an Optional
}

// jsonFields maps the JSON names of a struct's fields to their types, as
// encoding/json names them (tag name, else the Go name; embedded structs
// without a name lend theirs).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	var embedded []reflect.Type
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			embedded = append(embedded, ft)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	// A field of the struct itself hides one of the same name below it.
	for _, e := range embedded {
		for name, ft := range jsonFields(e) {
			if _, ok := out[name]; !ok {
				out[name] = ft
			}
		}
	}
	return out
}

// walkKeys reads one JSON value from dec, refusing a key given twice in
// any object in it and a key that is no field of the struct the object
// decodes into (t); path names the value as field errors do
// ("health_check.rise", "[1].host").
func walkKeys(dec *json.Decoder, path string, t reflect.Type) error {
	canBeNull := nullable(t)
	t = keyType(t)
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil && !canBeNull {
		// encoding/json leaves the value as it was: a null body became an
		// empty PATCH (a new version, nothing asked for) and a null in
		// hosts an empty name.
		kind := jsonKind(t.Kind().String())
		if path == "" {
			return errInvalid(fmt.Sprintf("the body must be %s, not null", strings.Replace(kind, "an ", "a JSON ", 1)))
		}
		msg := fmt.Sprintf("must be %s, not null", kind)
		return errInvalid(path+" "+msg, fielderr.FieldError{Field: path, Message: msg})
	}
	switch tok {
	case json.Delim('{'):
		var fields map[string]reflect.Type
		var elem reflect.Type
		switch {
		case t != nil && t.Kind() == reflect.Struct:
			fields = jsonFields(t)
		case t != nil && t.Kind() == reflect.Map:
			elem = t.Elem()
		}
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			k, _ := kt.(string)
			field := k
			if path != "" {
				field = path + "." + k
			}
			if seen[k] {
				return errInvalid(fmt.Sprintf("%s is given twice; give each field once", field),
					fielderr.FieldError{Field: field, Message: "is given twice; give each field once"})
			}
			seen[k] = true
			vt := elem
			if fields != nil {
				var ok bool
				if vt, ok = fields[k]; !ok {
					return unknownField(field, k, fields)
				}
			}
			if err := walkKeys(dec, field, vt); err != nil {
				return err
			}
		}
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := walkKeys(dec, fmt.Sprintf("%s[%d]", path, i), elem); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// unknownField refuses key (at field) as no field of a struct, naming the
// field it differs from only by case, if any.
func unknownField(field, key string, fields map[string]reflect.Type) error {
	msg := "unknown field"
	for name := range fields {
		if strings.EqualFold(name, key) {
			msg += fmt.Sprintf(" (names are matched exactly: did you mean %q?)", name)
			break
		}
	}
	return errInvalid(fmt.Sprintf("%s %s", strconv.Quote(field), msg), fielderr.FieldError{Field: field, Message: msg})
}

// jsonError turns an encoding/json error into a 400 with the position of
// the problem and, where known, the field.
func jsonError(body []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return errInvalid(fmt.Sprintf("malformed JSON at %s: %s", position(body, syn.Offset), syn.Error()))
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return errInvalid(fmt.Sprintf("malformed JSON at %s: unexpected end of input", position(body, int64(len(body)))))
	case errors.As(err, &typ):
		if typ.Field == "" {
			return errInvalid(fmt.Sprintf("the body must be a JSON object, not %s", typ.Value))
		}
		kind := jsonKind(typ.Type.Kind().String())
		if strings.HasSuffix(kind, "integer") && strings.HasPrefix(typ.Value, "number") {
			// A number that is no integer here: 1.5, 1e3, or out of range.
			kind += " written without a fraction or exponent, within range"
		}
		msg := fmt.Sprintf("must be %s, not %s", kind, typ.Value)
		// No position: inside an apitypes.Optional the offset counts from
		// the value, not from the body.
		return errInvalid(fmt.Sprintf("%s %s", typ.Field, msg),
			fielderr.FieldError{Field: typ.Field, Message: msg})
	}
	// DisallowUnknownFields reports `json: unknown field "name"`; the
	// package has no typed error for it, so the name is taken from the text.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if unq, uerr := strconv.Unquote(name); uerr == nil {
			name = unq
		}
		return errInvalid("unknown field "+strconv.Quote(name),
			fielderr.FieldError{Field: name, Message: "unknown field"})
	}
	return errInvalid("malformed JSON: " + err.Error())
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int8", "int16", "int32", "int64":
		return "an integer"
	case "uint", "uint8", "uint16", "uint32", "uint64":
		return "a non-negative integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	}
	return "a " + goKind
}

// position renders a byte offset as "line L, column C (byte B)".
func position(body []byte, offset int64) string {
	if offset < 0 {
		offset = 0
	}
	if offset > int64(len(body)) {
		offset = int64(len(body))
	}
	line, col := 1, 1
	for _, c := range body[:offset] {
		if c == '\n' {
			line++
			col = 1
			continue
		}
		col++
	}
	return fmt.Sprintf("line %d, column %d (byte %d)", line, col, offset)
}

// topLevelKeys lists the keys of a JSON object. PATCH uses it to know which
// fields the client sent, also when a value equals the zero value.
func topLevelKeys(body []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, jsonError(body, err)
	}
	return m, nil
}

// readStrict reads a JSON request body of at most limit bytes and decodes
// it strictly into dst.
func readStrict(w http.ResponseWriter, r *http.Request, limit int64, dst any) error {
	body, err := readJSONBody(w, r, limit)
	if err != nil {
		return err
	}
	return decodeStrict(body, dst)
}

// readPatch reads a PATCH body and decodes it strictly into probe, so that
// syntax, type and unknown-field errors are 400s independent of the stored
// state. It returns the body, to be decoded again onto the current row,
// and the keys the client sent.
func readPatch(w http.ResponseWriter, r *http.Request, limit int64, probe any) ([]byte, map[string]json.RawMessage, error) {
	body, err := readJSONBody(w, r, limit)
	if err != nil {
		return nil, nil, err
	}
	keys, err := topLevelKeys(body)
	if err != nil {
		return nil, nil, err
	}
	if err := decodeStrict(body, probe); err != nil {
		return nil, nil, err
	}
	return body, keys, nil
}

// page is a parsed ?limit=&after= pair.
type page struct {
	Limit int
	After string
}

func parsePage(r *http.Request) (page, error) {
	p := page{Limit: defaultPageLimit, After: r.URL.Query().Get("after")}
	if raw := r.URL.Query().Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > maxPageLimit {
			msg := fmt.Sprintf("must be an integer from 1 to %d", maxPageLimit)
			return p, errInvalid("limit "+msg, fielderr.FieldError{Field: "limit", Message: msg})
		}
		p.Limit = n
	}
	return p, nil
}

// pageOf trims a result fetched with limit+1 rows to the page and sets the
// cursor when a further row exists.
func pageOf[S, T any](rows []S, limit int, key func(S) string, conv func(S) (T, error)) (apitypes.List[T], error) {
	resp := apitypes.List[T]{Items: make([]T, 0, min(len(rows), limit))}
	if len(rows) > limit {
		rows = rows[:limit]
		resp.Next = key(rows[len(rows)-1])
	}
	for _, row := range rows {
		item, err := conv(row)
		if err != nil {
			return resp, err
		}
		resp.Items = append(resp.Items, item)
	}
	return resp, nil
}

// checkQuery parses a query string and refuses one that cannot be parsed,
// or that gives a parameter twice: every parameter of the API takes one
// value, and url.Values.Get would silently keep the first of
// ?cascade=false&cascade=true (and Query drops a malformed pair without a
// word).
func checkQuery(raw string) (url.Values, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, errInvalid("the query string cannot be read: " + err.Error())
	}
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if n := len(q[k]); n > 1 {
			msg := fmt.Sprintf("is given %d times; give it once", n)
			return nil, errInvalid(fmt.Sprintf("query parameter %s %s", k, msg), fielderr.FieldError{Field: k, Message: msg})
		}
	}
	return q, nil
}

// boolQuery parses a boolean query parameter ("" = false).
func boolQuery(r *http.Request, name string) (bool, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		return false, errInvalid(name+" must be true or false", fielderr.FieldError{Field: name, Message: "must be true or false"})
	}
	return v, nil
}
