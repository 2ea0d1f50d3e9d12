package desiderata_test

import (
	"context"
	"strings"
	"testing"

	"github.com/desiderata-xai/desiderata/clients/go/desiderata"
)

func TestExplainBatchRowErrorBeforeAnyCall(t *testing.T) {
	// Nothing listens on port 1: an error of the call would be UNAVAILABLE.
	c, err := desiderata.New("127.0.0.1:1", desiderata.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rows := []map[string]any{{"age": 30}, {"age": 31, "home": nil}}
	got, err := c.ExplainBatch(context.Background(), "credit", rows, "debugging")
	if err == nil {
		t.Fatalf("ExplainBatch = %v, want an error", got)
	}
	for _, want := range []string{"desiderata: rows[1]: ", `feature "home"`, "nil"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if strings.Count(err.Error(), "desiderata:") != 1 {
		t.Errorf("error %q: the package prefix more than once", err)
	}
}
