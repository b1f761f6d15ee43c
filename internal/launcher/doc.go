// Package launcher starts child processes and stops them: the children of
// `rbee demo`, and the nodes, simulators and proxies that the end-to-end
// tests and the benchmarks run.
//
// A Group starts each Process with its output in a log file of its own
// (<name>.log in Options.LogDir), reports the children that exit on their
// own (Exited, Await), and stops them all (Stop): Options.StopSignal, then
// SIGKILL for any still running after Options.Grace. Options also say what a
// child inherits: the environment, the signal it gets when this process dies
// (Pdeathsig), and whether it leads a process group of its own (so that a
// terminal's Ctrl-C reaches only the parent).
//
// A Group owns one goroutine per child, which Stop waits for. It never
// handles this process's signals, reads no environment of its own accord,
// and never exits the process.
package launcher
