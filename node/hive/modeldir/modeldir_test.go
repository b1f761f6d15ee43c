package modeldir

import "testing"

func TestSafePath(t *testing.T) {
	for p, ok := range map[string]bool{
		"model.gguf": true, "sub/tokenizer.json": true,
		"": false, "../x": false, "/etc/passwd": false, "a/../../b": false, ".hidden": false, "a/.git/x": false,
		`a\b`: false, "a\x00b": false, "a//b": false, "./a": false,
	} {
		if err := SafePath(p); (err == nil) != ok {
			t.Errorf("SafePath(%q) = %v, want ok %v", p, err, ok)
		}
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1000: "1000 B", 1024: "1.0 KiB", 3 << 19: "1.5 MiB", 5 << 30: "5.0 GiB"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
	if got := EscapePath("sub dir/a#b.gguf"); got != "sub%20dir/a%23b.gguf" {
		t.Errorf("EscapePath: %q", got)
	}
}
