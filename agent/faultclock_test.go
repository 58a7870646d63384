package agent

import (
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestStoreClock(t *testing.T) {
	for _, tc := range []struct {
		env     string
		want    time.Duration // offset from time.Now; ignored when nil clock or error
		nilFunc bool
		wantErr bool
	}{
		{env: "", nilFunc: true},
		{env: "2h", want: 2 * time.Hour},
		{env: "-90s", want: -90 * time.Second},
		{env: "two hours", wantErr: true},
		{env: "7200", wantErr: true},
	} {
		t.Run(tc.env, func(t *testing.T) {
			clock, err := storeClock(func(k string) string {
				if k != FaultClockOffsetEnv {
					t.Fatalf("read %s", k)
				}
				return tc.env
			}, zap.NewNop())
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if (clock == nil) != tc.nilFunc {
				t.Fatalf("clock nil = %v, want %v", clock == nil, tc.nilFunc)
			}
			if clock == nil {
				return
			}
			got := clock().Sub(time.Now())
			if d := got - tc.want; d < -time.Minute || d > time.Minute {
				t.Fatalf("offset %s, want about %s", got, tc.want)
			}
		})
	}
}
