package proxy

import (
	"context"
	"net/http"

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
