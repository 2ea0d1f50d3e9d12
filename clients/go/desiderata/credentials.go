package desiderata

import (
	"context"

	"google.golang.org/grpc/credentials"
)

// APIKey returns per-RPC credentials that send "authorization: Bearer <key>".
// With requireTLS, grpc refuses to send them over a plaintext connection.
func APIKey(key string, requireTLS bool) credentials.PerRPCCredentials {
	return bearer{key: key, requireTLS: requireTLS}
}

type bearer struct {
	key        string
	requireTLS bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.requireTLS }
