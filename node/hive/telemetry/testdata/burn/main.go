// Command burn is a stand-in worker for the process sampler's test: it keeps
// about one core busy and holds a known amount of touched memory until stdin
// closes.
//
// With -tree it is a worker whose children do the work, as `ollama serve`
// and its runner: the process itself is idle and starts a busy child and an
// idle child holding 128 MiB, which starts a busy grandchild. It prints
// "ready" once all of them are; each ends when its parent's pipe closes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

func main() {
	mib := flag.Int("mib", 64, "MiB of memory to hold")
	busy := flag.Bool("busy", true, "keep a core busy")
	tree := flag.Bool("tree", false, "start a busy child and a 128 MiB child with a busy grandchild")
	grandkid := flag.Bool("grandkid", false, "start a busy child")
	flag.Parse()
	buf := make([]byte, *mib<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	var kids []io.Closer
	if *tree {
		kids = append(kids, start("-mib", "8"), start("-busy=false", "-mib", "128", "-grandkid"))
	}
	if *grandkid {
		kids = append(kids, start("-mib", "8"))
	}
	if *busy {
		go func() {
			x := 0
			for {
				x++
			}
		}()
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, k := range kids {
		k.Close()
	}
	fmt.Println(buf[len(buf)-4096])
}

// start runs this program again with args and waits until it is ready. The
// returned pipe is its stdin: closing it ends the child, and so does this
// process dying.
func start(args ...string) io.Closer {
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		fail(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		fail(fmt.Errorf("child %v not ready: %q, %w", args, line, err))
	}
	return in
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "burn:", err)
	os.Exit(1)
}
