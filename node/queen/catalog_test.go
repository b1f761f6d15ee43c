package queen

import (
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

func TestRegistry_CatalogByModelPrefersAHiveThatCanStartIt(t *testing.T) {
	r := NewRegistry(time.Minute, time.Hour)
	now := time.Unix(1000, 0)
	facts := &wsapi.ModelFacts{Format: "gguf", Architecture: "llama", Quantization: "Q4_K_M", EstimateMB: 5212}
	r.Update(&wsapi.HiveTelemetry{HiveID: "a", Catalog: []wsapi.CatalogEntry{
		{Name: "llama", VRAMMB: 9999, VRAMSource: "size", Unavailable: "llama-server: not found"},
		{Name: "qwen", VRAMMB: 100, VRAMSource: "configured"}}}, now)
	r.Update(&wsapi.HiveTelemetry{HiveID: "b", Catalog: []wsapi.CatalogEntry{
		{Name: "llama", VRAMMB: 5212, VRAMSource: "gguf", Facts: facts},
		{Name: "qwen", VRAMMB: 200, VRAMSource: "learned"}}}, now)
	got := r.catalogByModel()
	if c := got["llama"]; c.VRAMMB != 5212 || c.VRAMSource != "gguf" || c.Facts != facts {
		t.Errorf("llama: %+v, want hive b's (a cannot start it)", c)
	}
	if c := got["qwen"]; c.VRAMMB != 100 || c.VRAMSource != "configured" {
		t.Errorf("qwen: %+v, want hive a's (first by id)", c)
	}
}
