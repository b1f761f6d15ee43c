package node_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
)

func readyz(addr string) (int, map[string]string, error) {
	resp, err := http.Get("http://" + addr + api.PathReady)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var v map[string]string
	err = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v, err
}

// TestReady: a node that can elect no queen (it may not be queen itself,
// and knows no other node) is not ready, and says why, while /healthz says
// it lives; a queen-and-hive node is ready once its queen is warm and its
// first report was taken; a node that joins it is ready once it follows it.
func TestReady(t *testing.T) {
	lone := nodetest.Start(t, "lone", nodetest.WithRoles([]string{}...)) // no role: never queen
	st, v, err := readyz(lone.HTTPAddr())
	if err != nil || st != http.StatusServiceUnavailable || v["reason"] != "no queen elected" {
		t.Fatalf("lone node: %d %v %v", st, v, err)
	}
	if resp, err := http.Get("http://" + lone.HTTPAddr() + api.PathHealth); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	a := nodetest.Start(t, "a")
	testutil.Eventually(t, 10*time.Second, "a ready", func() error {
		if st, v, err := readyz(a.HTTPAddr()); err != nil || st != http.StatusOK {
			return fmt.Errorf("%d %v %v", st, v, err)
		}
		return nil
	})
	b := nodetest.Start(t, "b", nodetest.WithRoles(), nodetest.WithJoin(a.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "b ready", func() error {
		if st, v, err := readyz(b.HTTPAddr()); err != nil || st != http.StatusOK {
			return fmt.Errorf("%d %v %v", st, v, err)
		}
		return nil
	})
}
