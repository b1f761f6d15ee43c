package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestSupervisor_AwaitFailsWhenAChildExits: a child that exits while the
// demo waits fails the wait at once, naming the child, its status and the
// end of its log.
func TestSupervisor_AwaitFailsWhenAChildExits(t *testing.T) {
	sup := newSupervisor("/bin/sh", t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer sup.stop()
	if _, err := sup.start("sleeper", "-c", "sleep 60"); err != nil {
		t.Fatal(err)
	}
	if _, err := sup.start("crasher", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; done; echo 'bind: address already in use' >&2; exit 3"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := sup.await(ctx, 10*time.Millisecond, func(context.Context) error { return errors.New("not yet") })
	var ce *childExitError
	if !errors.As(err, &ce) || time.Since(start) > 10*time.Second {
		t.Fatalf("await: %v after %v, want the crasher's exit at once", err, time.Since(start))
	}
	msg := err.Error()
	for _, want := range []string{"crasher (pid ", "exited: exit status 3", "crasher.log:", "line 4", "line 10", "bind: address already in use"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "line 3\n") {
		t.Errorf("error quotes more than the log's last %d lines:\n%s", childLogLines, msg)
	}
}

// TestSupervisor_AwaitGivesUpWithTheLastAnswer: when time runs out, the
// error says what was still missing.
func TestSupervisor_AwaitGivesUpWithTheLastAnswer(t *testing.T) {
	sup := newSupervisor("/bin/sh", t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer sup.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := sup.await(ctx, 10*time.Millisecond, func(context.Context) error { return errors.New("entry: model m not served yet") })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last answer: entry: model m not served yet") {
		t.Errorf("await: %v, want the deadline and the last answer", err)
	}
}
