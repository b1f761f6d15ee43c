package proxy

import (
	"context"
	"net/http"
	"sync"

	"github.com/rbee/rbee/node/tenants"
)

type tenantKey struct{}

// WithTenant marks a request as sent with the API key of t (nil: a request
// without a tenant: no keys file, or an --api-key key; where a keys file is
// in force the cluster token is refused, not let through tenant-less).
func WithTenant(ctx context.Context, t *tenants.Tenant) context.Context {
	return context.WithValue(ctx, tenantKey{}, t)
}

// tenantOf is the tenant a request came with, nil when none.
func tenantOf(r *http.Request) *tenants.Tenant {
	t, _ := r.Context().Value(tenantKey{}).(*tenants.Tenant)
	return t
}

// keyLabel names a request's key in metrics and logs: the tenant's name, or
// "-" without one.
func keyLabel(r *http.Request) string {
	if t := tenantOf(r); t != nil {
		return t.Name
	}
	return "-"
}

// keyGate counts, per key with a max_concurrent, the requests this entry
// node holds from the moment they arrive: a lower bound of what the queen
// counts, since each of them will be waiting or running there too.
type keyGate struct {
	mu sync.Mutex
	n  map[string]int
}

// enter counts a request of t, or refuses it when t already has its
// max_concurrent here (with that count); keys without a cap always pass.
func (g *keyGate) enter(t *tenants.Tenant) (int, bool) {
	if t == nil || t.MaxConcurrent <= 0 {
		return 0, true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.n[t.Name]; n >= t.MaxConcurrent {
		return n, false
	}
	g.n[t.Name]++
	return 0, true
}

// leave uncounts a request enter let in.
func (g *keyGate) leave(t *tenants.Tenant) {
	if t == nil || t.MaxConcurrent <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n[t.Name]--; g.n[t.Name] <= 0 {
		delete(g.n, t.Name)
	}
}
