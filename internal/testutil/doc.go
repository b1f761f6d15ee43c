// Package testutil holds what tests across rbee share: waiting for a
// condition by polling it until a deadline, the way serf's testutil/retry
// does, so that no test waits with time.Sleep; and checks of rendered text
// (golden files, table lines).
//
// Eventually fails a test unless a condition comes true in time;
// Consistently fails it if a condition breaks within a stretch of time;
// Until is the wait itself, returning an error instead of failing, for
// harness code that decides what a failed wait means. Every sets how often
// they look (10 ms unless told), and Stop lets a condition give up before the
// deadline when waiting longer cannot help (the process it waits for died).
//
// It is imported by _test.go files only, and must never sleep past the
// deadline it was given, start goroutines, or hold global state.
package testutil
