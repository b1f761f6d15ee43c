package telemetry

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
)

func TestParseWorkerSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    WorkerSpec
		wantErr string
	}{
		{"http://127.0.0.1:11434", WorkerSpec{URL: "http://127.0.0.1:11434", Group: "ext", Instance: "11434", Port: 11434}, ""},
		{"127.0.0.1:8000,model=llama-3.2-1b,slots=8", WorkerSpec{URL: "http://127.0.0.1:8000", Group: "ext", Instance: "8000", Port: 8000, Model: "llama-3.2-1b", Slots: 8}, ""},
		{"http://gpu1:8080/v1/,group=vllm,instance=a", WorkerSpec{URL: "http://gpu1:8080", Group: "vllm", Instance: "a", Port: 8080,
			Fixed: "dropped the trailing /v1 of http://gpu1:8080/v1/: rbee adds the API's paths (/v1/chat/completions) itself"}, ""},
		{"http://gpu1:8080/v1", WorkerSpec{URL: "http://gpu1:8080", Group: "ext", Instance: "8080", Port: 8080,
			Fixed: "dropped the trailing /v1 of http://gpu1:8080/v1: rbee adds the API's paths (/v1/chat/completions) itself"}, ""},
		{"http://box:8443/openai/v1/", WorkerSpec{URL: "http://box:8443/openai", Group: "ext", Instance: "8443", Port: 8443,
			Fixed: "dropped the trailing /v1 of http://box:8443/openai/v1/: rbee adds the API's paths (/v1/chat/completions) itself"}, ""},
		{"https://box:8443/openai/", WorkerSpec{URL: "https://box:8443/openai", Group: "ext", Instance: "8443", Port: 8443}, ""},
		{"https://box", WorkerSpec{}, "no port: name the port the server listens on, such as https://box:8080"},
		{"localhost", WorkerSpec{}, "no port: name the port the server listens on, such as http://localhost:8080"},
		{"http://localhost/v1", WorkerSpec{}, "no port"},
		{"unix:///run/llama.sock", WorkerSpec{}, "scheme"},
		{"http://h:8080,slots=0", WorkerSpec{}, "slots"},
		{"http://h:8080,slots=many", WorkerSpec{}, "slots"},
		{"http://h:8080,colour=red", WorkerSpec{}, "unknown option"},
		{"http://h:8080,model", WorkerSpec{}, "key=value"},
		{"ftp://h:21", WorkerSpec{}, "scheme"},
		{"http://h:99999", WorkerSpec{}, "port"},
		{"", WorkerSpec{}, "URL"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseWorkerSpec(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPIDListeningOn_FindsThisProcess(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	pid, err := PIDListeningOn(context.Background(), port)
	if err != nil {
		t.Fatal(err)
	}
	if pid != int32(os.Getpid()) {
		t.Fatalf("pid = %d, want this test process %d", pid, os.Getpid())
	}
	ln.Close()
	if _, err := PIDListeningOn(context.Background(), port); err == nil {
		t.Fatal("found a listener on a closed port")
	}
}
