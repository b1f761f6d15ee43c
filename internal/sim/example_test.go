package sim_test

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/rbee/rbee/internal/sim"
)

// A simulated worker behind a test server answers like llama-server.
func Example() {
	s, err := sim.New(sim.Config{Model: "llama-3.2-1b", Slots: 2})
	if err != nil {
		panic(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	resp, err := srv.Client().Post(srv.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"llama-3.2-1b","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`))
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	var out struct {
		Choices []struct {
			Message      struct{ Content string }
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		panic(err)
	}
	fmt.Println(out.Choices[0].Message.Content, "/", out.Choices[0].FinishReason)
	fmt.Println("served:", s.Stats().Served)
	// Output:
	// The quick brown fox / length
	// served: 1
}

// A migrated answer goes on where the dead worker's stream broke off, even
// mid-token.
func ExampleContinues() {
	k, rest, ok := sim.Continues("The quick br")
	fmt.Printf("%d %q %v\n", k, rest, ok)
	fmt.Println("The quick br" + rest + sim.Token(k+1) + sim.Token(k+2))
	_, _, ok = sim.Continues("Hello")
	fmt.Println(ok)
	// Output:
	// 2 "own" true
	// The quick brown fox jumps
	// false
}
