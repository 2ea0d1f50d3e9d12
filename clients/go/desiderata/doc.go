// Package desiderata is the Go client of the desiderata v1 API: explanations
// of deployed ML models, served at the fidelity the caller's policy allows.
//
// The generated messages and stubs live in package
// github.com/desiderata-xai/desiderata/clients/go/desiderata/v1 (desideratav1);
// this package adds what every caller needs around them: a connection with
// API-key credentials and TLS ([New], [WithAPIKey], [WithTLS]), a default
// deadline on every call ([WithDefaultTimeout]), [NewInstance] (and
// [MustInstance], [Value]), which builds an Instance from plain Go values, and
// [DecodeError], which turns a failed call's rich status details (google.rpc
// BadRequest, ErrorInfo, QuotaFailure, RetryInfo) into Go values.
//
//	inst, err := desiderata.NewInstance(map[string]any{"age": 30, "income": 129.0, "home": "rent"})
//	if err != nil { ... }
//	c, err := desiderata.New("explain.example.com:443", desiderata.WithAPIKey(key))
//	if err != nil { ... }
//	defer c.Close()
//	resp, err := c.Explanations.Explain(ctx, &desideratav1.ExplainRequest{Model: "credit", Instance: inst, ...})
//	if e := desiderata.DecodeError(err); e != nil && e.BadRequest != nil { ... }
package desiderata
