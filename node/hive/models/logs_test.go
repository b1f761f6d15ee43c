package models

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPruneLogs(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	for i := range 8 {
		p := fmt.Sprintf("%s/m-%d.log", dir, 9000+i)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		_ = os.Chtimes(p, now, now.Add(time.Duration(i)*time.Second))
	}
	_ = os.WriteFile(dir+"/m-large-1.log", nil, 0o644) // another model's
	pruneLogs(dir, "m", 4)
	left, _ := filepath.Glob(dir + "/*.log")
	if len(left) != 5 {
		t.Fatalf("left %v, want the newest 4 of m and the other model's", left)
	}
	for _, p := range left {
		if strings.HasSuffix(p, "m-9000.log") || strings.HasSuffix(p, "m-9003.log") {
			t.Fatalf("kept an old log: %v", left)
		}
	}
	var b strings.Builder
	c := &capped{w: &b, left: 5}
	if n, err := c.Write([]byte("hello world")); n != 11 || err != nil || b.String() != "hello" {
		t.Fatalf("capped: %d %v %q", n, err, b.String())
	}
}
