package certs

import (
	"fmt"
	"strings"

	legolog "github.com/go-acme/lego/v4/log"
	"go.uber.org/zap"
)

// RouteLegoLog sends lego's log lines to l (at info, or warn for lego's
// "[WARN]" lines), named "lego".
//
// lego logs through one package-level variable (log.Logger), not through
// anything passed to a client, so this sets process-wide state. The agent
// calls it once at start, before any issuer runs, with its root logger:
// there is one lego destination per process, and every issuer's lines
// carry the domain they are about. Tests that capture logs call it once
// from TestMain. Nothing in lego logs key material (account and
// certificate keys never reach its logger); the capture tests check that.
func RouteLegoLog(l *zap.Logger) {
	legolog.Logger = &legoLogger{log: l.Named("lego").WithOptions(zap.AddCallerSkip(2))}
}

// legoLogger adapts zap to lego's StdLogger.
type legoLogger struct {
	log *zap.Logger
}

func (g *legoLogger) write(msg string) {
	msg = strings.TrimRight(msg, "\n")
	switch {
	case strings.HasPrefix(msg, "[WARN] "):
		g.log.Warn(strings.TrimPrefix(msg, "[WARN] "))
	case strings.HasPrefix(msg, "[INFO] "):
		g.log.Info(strings.TrimPrefix(msg, "[INFO] "))
	default:
		g.log.Info(msg)
	}
}

func (g *legoLogger) Print(args ...any)                 { g.write(fmt.Sprint(args...)) }
func (g *legoLogger) Println(args ...any)               { g.write(fmt.Sprintln(args...)) }
func (g *legoLogger) Printf(format string, args ...any) { g.write(fmt.Sprintf(format, args...)) }

// Fatal* are used only by lego's own command, never by the library; an
// agent must not exit from inside a certificate order, so they log at
// error level and return.
func (g *legoLogger) Fatal(args ...any) { g.log.Error(fmt.Sprint(args...)) }
func (g *legoLogger) Fatalln(args ...any) {
	g.log.Error(strings.TrimRight(fmt.Sprintln(args...), "\n"))
}
func (g *legoLogger) Fatalf(format string, args ...any) { g.log.Error(fmt.Sprintf(format, args...)) }
