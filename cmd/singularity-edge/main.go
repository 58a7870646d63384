// Command singularity-edge is the Singularity Edge agent and its CLI: one
// binary that runs the edge load balancer (`singularity-edge agent`) and
// manages it (`pools`, `backends`, `certs`, `cluster`, `db`).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

func main() {
	os.Exit(execute(newRootCommand(), os.Args[1:], os.Stderr))
}

// execute runs root with args and reports a failure on stderr: as a
// sentence, or with --output json as the API's error shape (plus the
// exit code), so that a script gets JSON whichever side failed. It
// returns the process exit code.
func execute(root *cobra.Command, args []string, stderr io.Writer) int {
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	code := exitCodeOf(err)
	if !wantsJSON(cmd, args) {
		fmt.Fprintln(stderr, "error:", humanMessage(err))
		return code
	}
	out := struct {
		apitypes.ErrorBody
		ExitCode int `json:"exit_code"`
		Status   int `json:"status,omitempty"`
	}{ExitCode: code}
	var ae *apiError
	if errors.As(err, &ae) {
		out.Status = ae.Status
		out.Error = apitypes.ErrorDetail{Code: ae.Code, Message: ae.Message, Fields: ae.Fields, HeldBack: ae.HeldBack, Missing: ae.Missing}
		if out.Error.Code == "" {
			out.Error.Code = fmt.Sprintf("http_%d", ae.Status)
		}
	} else {
		out.Error = apitypes.ErrorDetail{Code: cliErrorCode(code), Message: humanMessage(err)}
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	fmt.Fprintln(stderr, string(b))
	return code
}

// cliErrorCode names a failure the CLI found itself (no API answer).
func cliErrorCode(exit int) string {
	switch exit {
	case exitUsage:
		return "usage"
	case exitUnavailable:
		return "unavailable"
	case exitNotFound:
		return "not_found"
	case exitInvalid:
		return "invalid"
	}
	return "failed"
}

// wantsJSON reports whether the command ran with --output json. A flag
// error can stop cobra before it parses the flag, so the arguments are
// read too.
func wantsJSON(cmd *cobra.Command, args []string) bool {
	if cmd != nil {
		if f := cmd.Flags().Lookup("output"); f != nil && f.Changed {
			return f.Value.String() == outputJSON
		}
	}
	for i, a := range args {
		switch {
		case a == "--":
			return false
		case a == "--output=json", a == "-o=json", a == "-ojson":
			return true
		case (a == "--output" || a == "-o") && i+1 < len(args):
			return args[i+1] == outputJSON
		case strings.HasPrefix(a, "--output=") || strings.HasPrefix(a, "-o="):
			return false
		}
	}
	return false
}

// packagePrefixes are the "pkg: " prefixes Go errors collect on their way
// up; the log keeps them, a person at the CLI does not need them.
var packagePrefixes = []string{"storage: ", "admin: ", "agent: ", "pools: ", "proxy: ", "certs: "}

// humanMessage is err's text without package prefixes, at its start or
// after a ": ", so that "storage: encryption key: ..." reads "encryption
// key: ...".
func humanMessage(err error) string {
	msg := err.Error()
	for changed := true; changed; {
		changed = false
		for _, p := range packagePrefixes {
			if strings.HasPrefix(msg, p) {
				msg, changed = msg[len(p):], true
			}
			if strings.Contains(msg, ": "+p) {
				msg, changed = strings.ReplaceAll(msg, ": "+p, ": "), true
			}
		}
	}
	return msg
}
