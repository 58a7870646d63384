// Package layering holds no code: its test checks the import rules that
// docs/ARCHITECTURE.md states against the module's actual imports.
package layering
