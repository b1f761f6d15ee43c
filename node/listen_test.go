package node

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// A connection that never sends a byte must not hold up Close: a node
// shutting down waits for its listener.
func TestMuxListener_CloseDoesNotWaitForSilentConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMuxListener(ln, nil)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Give the accept loop the connection, then close: a silent
	// connection's sniffer is unblocked, not waited out.
	done := make(chan error, 1)
	go func() { done <- m.Close() }()
	select {
	case <-done:
	case <-time.After(sniffTimeout - time.Second):
		t.Fatal("Close waited for a connection that sent nothing")
	}
}

// Plain HTTP and TLS arrive through one port; a first byte of TLS goes to
// the TLS side.
func TestMuxListener_HandsOnPlainConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMuxListener(ln, nil)
	defer m.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	got, err := m.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	buf := make([]byte, 3)
	if _, err := got.Read(buf); err != nil || string(buf) != "GET" {
		t.Fatalf("read %q, %v: the sniffed byte must still be there", buf, err)
	}
}

// flakyListener fails its first accepts as a process out of file
// descriptors does, then hands over real connections.
type flakyListener struct {
	net.Listener
	fails int
}

func (f *flakyListener) Accept() (net.Conn, error) {
	if f.fails > 0 {
		f.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return f.Listener.Accept()
}

// Running out of file descriptors for a moment must not stop a node
// serving for good.
func TestMuxListener_OutlivesAcceptErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMuxListener(&flakyListener{Listener: ln, fails: 3}, nil)
	defer m.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("G")); err != nil {
		t.Fatal(err)
	}
	got, err := m.Accept()
	if err != nil {
		t.Fatalf("accept after EMFILE: %v", err)
	}
	got.Close()
}
