package memhint

import (
	"testing"

	"github.com/linxGnu/grocksdb"
)

func TestInstall(t *testing.T) {
	o := grocksdb.NewDefaultOptions()
	defer o.Destroy()
	if got := Installed(o); got != "" {
		t.Fatalf("fresh options carry insert hint %q", got)
	}
	o.SetWriteBufferSize(7 << 20)
	if !Install(o) {
		t.Fatal("Install refused grocksdb's Options layout")
	}
	if got := Installed(o); got != Name {
		t.Fatalf("insert hint %q after Install, want %q", got, Name)
	}
	if got := o.GetWriteBufferSize(); got != 7<<20 {
		t.Fatalf("write buffer size %d after the layout probe, want %d", got, 7<<20)
	}
}
