// Package apitypes holds the JSON shapes of the admin API: request and
// response bodies, lists, errors and their codes. The admin server encodes
// and decodes them and the CLI (or any Go client) uses the same types, so
// the two cannot drift. It imports nothing of the agent: a client that
// uses it does not link the server.
//
// Conventions: field names are snake_case, durations are integer
// milliseconds, times are RFC 3339. Request fields are Optional: a field
// left out takes its default, a field that was sent is validated and
// stored as sent, or refused.
package apitypes
