package rocksabi

import (
	"testing"

	"github.com/linxGnu/grocksdb"
)

func TestOptionsLayout(t *testing.T) {
	o := grocksdb.NewDefaultOptions()
	defer o.Destroy()
	for _, v := range []uint64{1 << 20, 12345678} {
		o.SetWriteBufferSize(v)
		if got := WriteBufferSize(o); got != v {
			t.Fatalf("read %d through the C++ options, grocksdb set %d", got, v)
		}
	}
	o.SetWriteBufferSize(7 << 20)
	if !OptionsLayoutOK(o) {
		t.Fatal("OptionsLayoutOK refused grocksdb's Options layout")
	}
	if got := o.GetWriteBufferSize(); got != 7<<20 {
		t.Fatalf("write buffer size %d after the probe, want %d", got, 7<<20)
	}
}
