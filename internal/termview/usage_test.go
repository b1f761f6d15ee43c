package termview

import (
	"strings"
	"testing"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

func TestRenderUsage(t *testing.T) {
	v := &api.UsageView{Node: "n1", Queen: "q", SinceS: 3600, Rows: []wsapi.UsageRow{
		{Key: "a", Model: "llama", Requests: 3, PromptTokens: 30, CompletionTokens: 12, Migrated: 1, QueueWaitP50MS: 0.5, QueueWaitP99MS: 2.8},
		{Key: "b", Model: "llama", Requests: 1, PromptTokens: 5, CompletionTokens: 4, QueueWaitP50MS: 1448.2, QueueWaitP99MS: 1448.2},
	}}
	var b strings.Builder
	if err := RenderUsage(&b, v, 0); err != nil {
		t.Fatal(err)
	}
	want := `usage over the last 1h0m0s (queen q)
KEY    MODEL  REQUESTS  PROMPT  COMPLETION  MIGRATED  WAIT P50  WAIT P99
a      llama  3         30      12          1         <1ms      3ms
b      llama  1         5       4           0         1.4s      1.4s
TOTAL         4         35      16          1
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := RenderUsage(&b, &api.UsageView{Queen: "q", SinceS: 600}, 0); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "no requests") {
		t.Errorf("empty usage printed %q", b.String())
	}
}
