package desiderata

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	desideratav1 "github.com/desiderata-xai/desiderata/clients/go/desiderata/v1"
)

// DefaultTimeout bounds every call whose context carries no deadline.
const DefaultTimeout = 30 * time.Second

// Client holds one connection and the stubs of the v1 services.
type Client struct {
	conn *grpc.ClientConn
	// Explanations is the ExplanationService stub.
	Explanations desideratav1.ExplanationServiceClient
	// Models is the ModelService stub (see [Client.Decisions] for ListDecisions).
	Models desideratav1.ModelServiceClient
	// Audit is the AuditService stub (regulators and auditors; see [Client.AuditEntries]).
	Audit desideratav1.AuditServiceClient
}

type options struct {
	tls         *tls.Config
	plaintext   bool
	apiKey      string
	timeout     time.Duration
	dialOptions []grpc.DialOption
}

// Option configures [New].
type Option func(*options)

// WithAPIKey sends key as "authorization: Bearer <key>" on every call.
func WithAPIKey(key string) Option { return func(o *options) { o.apiKey = key } }

// WithTLS sets the TLS configuration (the default is TLS with the system roots).
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg; o.plaintext = false } }

// WithInsecure uses a plaintext connection. The API key, if any, is then sent
// in clear: only for a local server or a trusted sidecar.
func WithInsecure() Option { return func(o *options) { o.plaintext = true } }

// WithDefaultTimeout sets the deadline of calls whose context has none
// (default [DefaultTimeout]; 0 disables it).
func WithDefaultTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithDialOptions appends raw grpc dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// New connects to target ("host:port"). The connection is lazy: errors of the
// transport surface on the first call.
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	dial := make([]grpc.DialOption, 0, len(o.dialOptions)+4)
	if o.plaintext {
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		cfg := o.tls
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	if o.apiKey != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(APIKey(o.apiKey, !o.plaintext)))
	}
	if o.timeout > 0 {
		dial = append(dial,
			grpc.WithChainUnaryInterceptor(unaryDeadline(o.timeout)),
			grpc.WithChainStreamInterceptor(streamDeadline(o.timeout)))
	}
	dial = append(dial, o.dialOptions...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:         conn,
		Explanations: desideratav1.NewExplanationServiceClient(conn),
		Models:       desideratav1.NewModelServiceClient(conn),
		Audit:        desideratav1.NewAuditServiceClient(conn),
	}, nil
}

// AuditEntries returns every entry matching req, oldest first. QueryAudit
// answers one page at a time (at most 100 entries unless req.PageSize says
// otherwise); AuditEntries follows next_page_token from req.PageToken until
// it is empty. req itself is not modified. On an error it returns the entries
// of the pages read so far with the error.
func (c *Client) AuditEntries(ctx context.Context, req *desideratav1.QueryAuditRequest,
	opts ...grpc.CallOption) ([]*desideratav1.AuditEntry, error) {
	page := proto.Clone(req).(*desideratav1.QueryAuditRequest)
	var entries []*desideratav1.AuditEntry
	for {
		resp, err := c.Audit.QueryAudit(ctx, page, opts...)
		if err != nil {
			return entries, err
		}
		entries = append(entries, resp.GetEntries()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return entries, nil
		}
		if next == page.PageToken { // a server bug would otherwise loop forever
			return entries, fmt.Errorf("desiderata: QueryAudit returned page token %q again", next)
		}
		page.PageToken = next
	}
}

// Decisions returns the decisions recorded about one subject by a model (any
// version), newest first, without the features they were made from. An empty
// req.SubjectId means the caller's own subject (end users, who list their own
// to ask ExplainDecision about them); staff list a subject's decisions as the
// policy allows (action "decisions/list"). Every list is audited. ListDecisions
// answers one page at a time (50 decisions unless req.PageSize says
// otherwise); Decisions follows next_page_token from req.PageToken until it is
// empty. req itself is not modified. On an error it returns the decisions of
// the pages read so far with the error.
func (c *Client) Decisions(ctx context.Context, req *desideratav1.ListDecisionsRequest,
	opts ...grpc.CallOption) ([]*desideratav1.RecordedDecision, error) {
	page := proto.Clone(req).(*desideratav1.ListDecisionsRequest)
	var decisions []*desideratav1.RecordedDecision
	for {
		resp, err := c.Models.ListDecisions(ctx, page, opts...)
		if err != nil {
			return decisions, err
		}
		decisions = append(decisions, resp.GetDecisions()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return decisions, nil
		}
		if next == page.PageToken { // a server bug would otherwise loop forever
			return decisions, fmt.Errorf("desiderata: ListDecisions returned page token %q again", next)
		}
		page.PageToken = next
	}
}

// ExplainOption sets an optional field of the request of [Client.ExplainBatch]
// and [Client.ExplainDecisions].
type ExplainOption func(*explainOptions)

type explainOptions struct {
	kind         desideratav1.ExplanationKind
	consumption  desideratav1.Consumption
	params       *desideratav1.ExplanationParams
	modelVersion string
	locale       string
	call         []grpc.CallOption
}

// newExplainOptions applies opts over the defaults: feature attribution, static consumption.
func newExplainOptions(opts []ExplainOption) explainOptions {
	o := explainOptions{
		kind:        desideratav1.ExplanationKind_EXPLANATION_KIND_FEATURE_ATTRIBUTION,
		consumption: desideratav1.Consumption_CONSUMPTION_STATIC,
	}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithKind sets the explanation kind (default feature attribution).
func WithKind(k desideratav1.ExplanationKind) ExplainOption {
	return func(o *explainOptions) { o.kind = k }
}

// WithConsumption sets how the explanation is consumed (default static).
func WithConsumption(c desideratav1.Consumption) ExplainOption {
	return func(o *explainOptions) { o.consumption = c }
}

// WithParams sets the explanation parameters, e.g. the attribution method
// (default none: the server chooses).
func WithParams(p *desideratav1.ExplanationParams) ExplainOption {
	return func(o *explainOptions) { o.params = p }
}

// WithModelVersion selects a model version (default the served version).
func WithModelVersion(v string) ExplainOption {
	return func(o *explainOptions) { o.modelVersion = v }
}

// WithLocale sets the locale of narrative sentences, e.g. "en" (default the
// server's, "en").
func WithLocale(l string) ExplainOption {
	return func(o *explainOptions) { o.locale = l }
}

// WithCallOptions appends grpc call options to the call.
func WithCallOptions(opts ...grpc.CallOption) ExplainOption {
	return func(o *explainOptions) { o.call = append(o.call, opts...) }
}

// ExplainBatch explains every row of a table with one ExplainBatch call and
// returns one explanation per row, in the order of rows. Each row is converted
// as [NewInstance] does; the kind (feature attribution unless [WithKind]),
// purpose, consumption (static unless [WithConsumption]), parameters and
// locale are those of every row.
//
// The server takes at most its explain.max_batch_instances rows (256 by
// default) and answers all or nothing: an invalid row fails the whole call
// with INVALID_ARGUMENT, its field violations named
// "instances[i].features[name]" (see [DecodeError]), and a batch that does not
// fit the caller's rate or budget fails with nothing charged. Each row is
// admitted, charged and audited as a call of its own, so its answer is the
// one Explain would give for it alone, up to float32 rounding (the server may
// evaluate the rows in shared passes). Callers who may not submit instances
// (end users) get PERMISSION_DENIED.
//
// A row that cannot be converted is an error naming the row and the feature,
// before any call; other errors are the call's, for [DecodeError].
func (c *Client) ExplainBatch(ctx context.Context, model string, rows []map[string]any, purpose string,
	opts ...ExplainOption) ([]*desideratav1.Explanation, error) {
	o := newExplainOptions(opts)
	req := &desideratav1.ExplainBatchRequest{
		Model:        model,
		ModelVersion: o.modelVersion,
		Instances:    make([]*desideratav1.Instance, 0, len(rows)),
		Kind:         o.kind,
		Purpose:      purpose,
		Consumption:  o.consumption,
		Params:       o.params,
		Locale:       o.locale,
	}
	for i, row := range rows {
		inst, err := instance(row)
		if err != nil {
			return nil, fmt.Errorf("desiderata: rows[%d]: %w", i, err)
		}
		req.Instances = append(req.Instances, inst)
	}
	resp, err := c.Explanations.ExplainBatch(ctx, req, o.call...)
	if err != nil {
		return nil, err
	}
	explanations := resp.GetExplanations()
	if len(explanations) != len(rows) { // one per row, or the order means nothing
		return nil, fmt.Errorf("desiderata: ExplainBatch returned %d explanations for %d rows",
			len(explanations), len(rows))
	}
	return explanations, nil
}

// ExplainDecisions explains decisions recorded by Predict (their ids) with
// one ExplainBatch call and returns one explanation per id, in the order of
// decisionIDs, each the one ExplainDecision would give for it (up to float32
// rounding) with its recorded_decision_id set to the id. The options are
// those of [Client.ExplainBatch]; the model is the decisions' own, and
// [WithModelVersion], if given, must be their version.
//
// The decisions must all be of one model version, and the server answers all
// or nothing, as for [Client.ExplainBatch]: an end user may ask only about
// their own decisions, and one decision of someone else's refuses the whole
// call with PERMISSION_DENIED; an unknown id fails it with NOT_FOUND, its
// message naming "decision_ids[i]"; an empty id, or decisions of different
// model versions, fail it with INVALID_ARGUMENT, its field violations named
// "decision_ids..." (see [DecodeError]).
//
// An answer that is not one explanation per id, each of the id asked in its
// place, is an error; other errors are the call's, for [DecodeError].
func (c *Client) ExplainDecisions(ctx context.Context, decisionIDs []string, purpose string,
	opts ...ExplainOption) ([]*desideratav1.Explanation, error) {
	o := newExplainOptions(opts)
	req := &desideratav1.ExplainBatchRequest{
		ModelVersion: o.modelVersion,
		DecisionIds:  decisionIDs,
		Kind:         o.kind,
		Purpose:      purpose,
		Consumption:  o.consumption,
		Params:       o.params,
		Locale:       o.locale,
	}
	resp, err := c.Explanations.ExplainBatch(ctx, req, o.call...)
	if err != nil {
		return nil, err
	}
	explanations := resp.GetExplanations()
	if len(explanations) != len(decisionIDs) {
		return nil, fmt.Errorf("desiderata: ExplainBatch returned %d explanations for %d decisions",
			len(explanations), len(decisionIDs))
	}
	for i, e := range explanations {
		if got := e.GetRecordedDecisionId(); got != decisionIDs[i] {
			return nil, fmt.Errorf("desiderata: ExplainBatch answered decision_ids[%d] %q with decision %q",
				i, decisionIDs[i], got)
		}
	}
	return explanations, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, e.g. for the health service.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

func unaryDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

func streamDeadline(d time.Duration) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if _, ok := ctx.Deadline(); ok {
			return streamer(ctx, desc, cc, method, opts...)
		}
		// The stream outlives this function: its context is cancelled by the
		// timer, which also releases it.
		ctx, cancel := context.WithTimeout(ctx, d)
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			cancel()
			return nil, err
		}
		context.AfterFunc(ctx, cancel)
		return s, nil
	}
}
