// Command burn is a stand-in worker for the process sampler's test: it keeps
// about one core busy and holds a known amount of touched memory until stdin
// closes.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	mib := flag.Int("mib", 64, "MiB of memory to hold")
	flag.Parse()
	buf := make([]byte, *mib<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	go func() {
		x := 0
		for {
			x++
		}
	}()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	fmt.Println(buf[len(buf)-4096])
}
