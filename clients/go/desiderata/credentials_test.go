package desiderata_test

import (
	"context"
	"testing"

	"github.com/desiderata-xai/desiderata/clients/go/desiderata"
)

func TestAPIKeySendsBearerHeader(t *testing.T) {
	creds := desiderata.APIKey("k-123", true)
	md, err := creds.GetRequestMetadata(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if md["authorization"] != "Bearer k-123" {
		t.Errorf("metadata = %v", md)
	}
	if !creds.RequireTransportSecurity() {
		t.Error("TLS not required")
	}
	if desiderata.APIKey("k", false).RequireTransportSecurity() {
		t.Error("plaintext credentials require TLS")
	}
}
